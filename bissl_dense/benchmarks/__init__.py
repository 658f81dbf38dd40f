"""Benchmarks: ``python -m bissl_dense.benchmarks.<name>`` (each prints a table)."""
