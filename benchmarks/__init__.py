"""Benchmarks: each prints a table and writes JSON with the machine description (ratios measured side by side)."""
