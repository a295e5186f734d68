"""Writes Envoy's configurations from the one typed description: envoy/envoy.yaml for the local stack
and the chart's copies for Kubernetes (a JWKS file, or a JWKS URL)."""

from __future__ import annotations

import sys
from pathlib import Path

from devstack.envoy_config import K8S_HEADER, Layout, render, render_k8s, to_yaml
from devstack.paths import ENVOY_YAML, ROOT

CHART_FILES = ROOT / "deploy" / "helm" / "runtrack" / "files"
K8S_ENVOY_YAML = CHART_FILES / "envoy.yaml"
K8S_ENVOY_REMOTE_JWKS_YAML = CHART_FILES / "envoy-remote-jwks.yaml"


def outputs() -> dict[Path, str]:
    """Every generated file and what it must hold."""
    return {
        ENVOY_YAML: to_yaml(render(Layout())),
        K8S_ENVOY_YAML: to_yaml(render_k8s(), K8S_HEADER),
        K8S_ENVOY_REMOTE_JWKS_YAML: to_yaml(render_k8s(remote_jwks=True), K8S_HEADER),
    }


def main() -> int:
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
