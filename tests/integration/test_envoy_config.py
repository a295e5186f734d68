import subprocess

from devstack import tools
from devstack.envoy_config import Layout, render, to_yaml
from devstack.paths import ENVOY_YAML, ROOT


def test_committed_envoy_yaml_is_the_render_of_the_typed_description():
    assert ENVOY_YAML.read_text() == to_yaml(render(Layout())), "envoy/envoy.yaml is stale: run scripts/gen-envoy"


def test_envoy_validates_the_committed_config():
    out = subprocess.run([str(tools.envoy()), "--mode", "validate", "-c", str(ENVOY_YAML)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout + out.stderr
