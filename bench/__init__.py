"""The benchmarks (`scripts/bench ...`), each against the local stack it starts when needed, the Go phone
generator they drive (`phonegen/`, built by `generator.py`), and what they share for measuring
(`sampling.py`: CPU and memory from /proc, the replicas' metrics, histogram quantiles)."""
