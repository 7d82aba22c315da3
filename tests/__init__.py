"""The test suite (a package, so that tooling/benchmark.py can import tests.hf_reference unambiguously)."""
