"""Who measured a record: the environment half of a schedule record's key."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from .. import __version__


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_device(preset) -> str:
    """This machine as a device name: CPU model, LLVM CPU and core count (a VM that shows 2 cores
    of a 96-core part schedules differently from the whole part)."""
    mcpu = preset.tvm_target.get("mcpu", "")
    return f"{cpu_model()} {mcpu} {os.cpu_count()}c".strip()


def environment(preset, tvm_version: str, device: str | None, threads: int | None) -> dict:
    return {"target": preset.name, "tvm_target": json.dumps(preset.tvm_target, sort_keys=True), "device": device,
            "threads": threads, "qcompile": __version__, "tvm": tvm_version}


def for_build(preset, tvm_version: str) -> dict:
    """A native build runs where it is built: match this host exactly. Any other preset may run
    on any device of its target: match the target and its codegen flags only."""
    if preset.name == "native":
        return environment(preset, tvm_version, host_device(preset), os.cpu_count())
    return environment(preset, tvm_version, None, None)
