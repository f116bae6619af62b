"""Benchmarks of dsen2cr: each prints a table and writes its numbers to a JSON file."""
