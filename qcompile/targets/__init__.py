"""Targets: presets (data), lowering to TVM TIR, schedules and micro-kernels. All TVM imports live here."""
