"""Host CPU detection for the `native` preset: an explicit CPU name, never LLVM's 'native'."""

from __future__ import annotations

from tvm.target import codegen


def detect_host_cpu() -> str:
    name = codegen.llvm_get_system_cpu()
    if not name or name in ("generic", "native"):
        raise RuntimeError("could not detect the host CPU; use an explicit --target preset")
    return name
