"""TE of the quantized linear layers for GPU targets (targets/lower_qlinear_gpu.py): per-token
int8 activations, then a GEMV/GEMM that dequantizes W[N, K] int8 in registers.

The float32 operations of quantize_rows and their order are those of
qcompile.quant.activations.quantize_per_token (a contract: its rows and scales are bit-identical).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

F32 = "float32"


def quantize_rows(node, ins, out_shapes, out_dtypes):
    """x[rows..., K] -> xq int8 [rows..., K], scale [rows..., 1]."""
    x = ins[0]
    *lead, k_dim = x.shape
    f = lambda v: tirx.const(v, F32)          # noqa: E731
    if "amax" in node.attrs:
        static = f(float(np.float32(node.attrs["amax"])))
        amax = te.compute(lead, lambda *i: static, name="amax")
    else:
        k = te.reduce_axis((0, k_dim), name="k")
        amax = te.compute(lead, lambda *i: te.max(tirx.abs(x(*i, k)), axis=k), name="amax")
    nonzero = lambda *i: amax(*i) > f(0.0)     # noqa: E731
    inv = te.compute(lead, lambda *i: tirx.Select(nonzero(*i), f(127.0) / amax(*i), f(0.0)), name="inv")
    scale = te.compute([*lead, 1], lambda *i: tirx.Select(nonzero(*i[:-1]), amax(*i[:-1]) / f(127.0), f(0.0)),
                       name="scale")

    def q(*i):
        prod = x(*i) * inv(*i[:-1])
        prod = tirx.Select(prod >= f(-127.0), prod, f(-127.0))      # NaN -> -127, as numpy's contract says
        return tirx.Cast("int8", tirx.nearbyint(tirx.min(prod, f(127.0))))
    return [te.compute(x.shape, q, name="xq"), scale]


def qlinear(node, ins, out_shapes, out_dtypes):
    """y[rows..., n] = xscale * sum_k xq * ((W[n, k] - Z[n, k / G]) * S[n, k / G]), W unpacked from
    attr bits (8: int8 bytes; 4 or 2: fields of uint8 bytes holding value + offset)."""
    xq, xscale, w, s = ins[:4]
    z = ins[4] if len(ins) > 4 else None
    group = int(node.attrs["group"])
    *lead, k_dim = xq.shape
    n_dim = w.shape[0]
    k = te.reduce_axis((0, k_dim), name="k")

    bits, offset = int(node.attrs.get("bits", 8)), int(node.attrs.get("offset", 0))
    per = 8 // bits

    def field(n, kk):          # the value at k = kk: its bit field of W's byte, minus the offset
        if bits == 8:
            return tirx.Cast(F32, w[n, kk])
        byte = tirx.Cast("int32", w[n, kk // per])
        shift = tirx.Cast("int32", (kk % per) * bits)
        return tirx.Cast(F32, ((byte >> shift) & ((1 << bits) - 1)) - offset)

    def weight(n, kk):
        q = field(n, kk)
        if z is not None:
            q = q - z[n, kk // group]
        return q * s[n, kk // group]
    acc = te.compute([*lead, n_dim], lambda *i: te.sum(tirx.Cast(F32, xq(*i[:-1], k)) * weight(i[-1], k), axis=k),
                     name="acc")
    return [te.compute([*lead, n_dim], lambda *i: acc(*i) * xscale(*i[:-1], 0), name="y")]
