"""The local stack: installs and runs the CQL node, PostgreSQL, the replicas and Envoy."""
