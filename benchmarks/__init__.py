"""molm_fast benchmarks: ``python -m benchmarks.run --suite cpu|gpu [--quick]``; see harness.py for the API."""
