"""Benchmarks run by `chameleon bench <name>`."""
