"""Test support shared by the tests and the benchmarks: clusters, the oracle, Grafana emulation."""
