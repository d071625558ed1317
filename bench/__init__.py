"""Benchmarks of the gateway against the alternatives a user would pick: ``make bench``."""
