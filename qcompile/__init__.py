"""qcompile: a quantizing ahead-of-time compiler from ONNX to one native library per target."""

__version__ = "0.1.0"


def load(path, num_threads: int = 0):
    """Load a built artifact (.so) for use from numpy; see qcompile.artifact.loader.Model."""
    from .artifact.loader import load as _load
    return _load(path, num_threads)
