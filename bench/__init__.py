"""meshserve benchmarks (run with `python -m bench.<name>`; not tests)."""
