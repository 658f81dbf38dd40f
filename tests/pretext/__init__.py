"""Tests of bissl_dense.pretext."""
