"""Test harnesses shared by the test suite and tools (ONNX node suite, comparisons)."""
