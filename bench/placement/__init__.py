"""Placement benchmark: hit ratio vs LRU and Belady, decision latency, route publishing.

Run `python -m bench.placement` (or `make bench-placement`) from the repository root.
Every figure is measured in the same run against its baseline; seeds are fixed.
"""
