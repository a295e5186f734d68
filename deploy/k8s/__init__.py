"""The local single-node Kubernetes cluster (`scripts/k8s`): its node (`node.py`), the cluster's processes
(`cluster.py`), its NetworkPolicy firewall (`netpol.py`) and Prometheus' pod discovery (`sd.py`)."""
