"""Lowering to Apache TVM: TE kernels per op, CPU schedule templates, compilation to objects.

This package is the only place qcompile imports TVM.
"""
