"""Writes envoy/envoy.yaml: the render of the default layout."""

from __future__ import annotations

import sys

from devstack.envoy_config import Layout, render, to_yaml
from devstack.paths import ENVOY_YAML


def main() -> int:
    ENVOY_YAML.parent.mkdir(parents=True, exist_ok=True)
    ENVOY_YAML.write_text(to_yaml(render(Layout())))
    print(f"wrote {ENVOY_YAML.relative_to(ENVOY_YAML.parent.parent)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
