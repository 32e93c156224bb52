"""qcompile: a quantizing ahead-of-time compiler from ONNX to one native library per target."""

__version__ = "0.1.0"
