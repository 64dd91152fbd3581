"""Microbenchmarks, one module per op family: python -m bench.<family> --help."""
