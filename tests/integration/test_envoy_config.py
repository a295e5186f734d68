import subprocess
from pathlib import Path

from devstack import tls, tools
from devstack.auth import LocalIssuer
from devstack.envoy_config import Layout, eds_document, render, to_yaml
from devstack.paths import DESCRIPTOR_SET, ENVOY_YAML


def test_committed_envoy_yaml_is_the_render_of_the_typed_description():
    assert ENVOY_YAML.read_text() == to_yaml(render(Layout())), "envoy/envoy.yaml is stale: run scripts/gen-envoy"


def test_envoy_validates_the_committed_config(tmp_path):
    # Envoy resolves the config's relative paths from its working directory: give it one
    # holding the descriptor set and the EDS files the way `scripts/dev` lays them out.
    layout = Layout()
    (tmp_path / "generated").mkdir()
    (tmp_path / layout.descriptor_set).write_bytes(DESCRIPTOR_SET.read_bytes())
    eds = tmp_path / layout.eds_dir
    eds.mkdir(parents=True)
    assert layout.auth is not None
    LocalIssuer(tmp_path / Path(layout.auth.jwks_file).parent).ensure_keys()
    for static in layout.static_files:  # the built page and the OpenAPI document
        (tmp_path / static.file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / static.file).write_text("served by Envoy")
    for cluster in layout.clusters:
        (eds / f"{cluster.name}.yaml").write_text(to_yaml(eds_document(cluster.name, [50110])))
    assert layout.tls is not None
    tls.ensure(tmp_path / Path(layout.tls.watched_dir).parent)
    out = subprocess.run(
        [str(tools.envoy()), "--mode", "validate", "-c", str(ENVOY_YAML)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout + out.stderr
