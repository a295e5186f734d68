"""The edge: Envoy's configuration for production (the chart) and for the local stacks, rendered from
one typed description (`edge.config`), with the per-runner limits it enforces (`limits.yaml`).
`scripts/gen-envoy` (`python -m edge.generate`) writes the renders. It depends on nothing of the
local stack: what differs there (ports, keys, files) is passed in."""
