"""The test suite (a package, so that benchmark.py can import tests.hf_reference unambiguously)."""
