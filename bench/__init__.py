"""Benchmarks (`make bench`): figures, not pass/fail; see README "Benchmarks"."""
