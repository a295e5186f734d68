"""Tests of the tools around the product: the local stack, the edge generator, the chart, the images,
the local cluster's helpers, the benchmarks' arithmetic and the host programs' table. No servers."""
