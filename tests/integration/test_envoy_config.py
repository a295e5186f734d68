import subprocess
from pathlib import Path

from devstack import tls, tools
from devstack.auth import LocalIssuer
from devstack.paths import DESCRIPTOR_SET
from devstack.stack import dev_spec
from edge.config import eds_document, render, to_yaml
from edge.generate import ENVOY_YAML, K8S_ENVOY_YAML, outputs


def test_committed_envoy_yaml_is_the_render_the_chart_deploys():
    assert ENVOY_YAML.read_text() == outputs()[ENVOY_YAML], "envoy/envoy.yaml is stale: run scripts/gen-envoy"
    assert K8S_ENVOY_YAML.is_symlink() and K8S_ENVOY_YAML.resolve() == ENVOY_YAML.resolve()


def test_envoy_validates_the_local_stacks_render(tmp_path):
    # Envoy resolves the config's relative paths from its working directory: give it one
    # holding the descriptor set and the EDS files the way `scripts/dev` lays them out.
    layout = dev_spec().layout
    (tmp_path / "generated").mkdir()
    (tmp_path / layout.descriptor_set).write_bytes(DESCRIPTOR_SET.read_bytes())
    eds = tmp_path / layout.eds_dir
    eds.mkdir(parents=True)
    assert layout.auth is not None
    LocalIssuer(tmp_path / Path(layout.auth.jwks_file).parent).ensure_keys()
    if layout.auth.link_jwks_file is not None:  # any key set will do for a validation
        (tmp_path / layout.auth.link_jwks_file).write_bytes((tmp_path / layout.auth.jwks_file).read_bytes())
    for static in layout.static_files:  # the built page and the OpenAPI document
        (tmp_path / static.file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / static.file).write_text("served by Envoy")
    for cluster in layout.clusters:
        (eds / f"{cluster.name}.yaml").write_text(to_yaml(eds_document(cluster.name, [50110])))
    assert layout.tls is not None
    tls.ensure(tmp_path / Path(layout.tls.watched_dir).parent)
    config = tmp_path / "envoy.yaml"
    config.write_text(to_yaml(render(layout)))
    out = subprocess.run(
        [str(tools.envoy()), "--mode", "validate", "-c", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout + out.stderr
