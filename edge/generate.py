"""Writes Envoy's production configuration, rendered from the one typed description (`edge.config`):
envoy/envoy.yaml, which the chart deploys (its `files/envoy.yaml` is a link to it), and the chart's
variant for a JWKS fetched from a URL. The local stacks render their own at start (ports, keys and
replica files of this machine) and commit nothing."""

from __future__ import annotations

import sys
from pathlib import Path

from edge.config import K8S_HEADER, render_k8s, to_yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"
CHART_FILES = ROOT / "deploy" / "helm" / "runtrack" / "files"
K8S_ENVOY_YAML = CHART_FILES / "envoy.yaml"
K8S_ENVOY_REMOTE_JWKS_YAML = CHART_FILES / "envoy-remote-jwks.yaml"


def outputs() -> dict[Path, str]:
    """Every generated file and what it must hold."""
    return {
        ENVOY_YAML: to_yaml(render_k8s(), K8S_HEADER),
        K8S_ENVOY_REMOTE_JWKS_YAML: to_yaml(render_k8s(remote_jwks=True), K8S_HEADER),
    }


def main() -> int:
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    if not K8S_ENVOY_YAML.is_symlink():
        K8S_ENVOY_YAML.unlink(missing_ok=True)
        K8S_ENVOY_YAML.symlink_to(Path("../../../../envoy/envoy.yaml"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
