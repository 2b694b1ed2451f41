"""Benchmarks, one command each (see ``scripts/bench``)."""
