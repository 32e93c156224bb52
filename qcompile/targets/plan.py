"""From an optimized graph to an execution plan: which nodes run as kernels, which are views,
which are evaluated at build time as symbolic shapes, and where every tensor lives.

No TVM here: the plan is data. Kernels are described by their node; `targets/tvm/` turns them
into TIR, and `artifact/` turns the plan into C.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import QCompileError
from ..ir import dims, dtypes
from ..ir.graph import Graph, Node, Value
from ..ir.shape_rules import SymValues, propagate_symbolic

# Inputs read at build time (shapes, axes, sizes), never passed to a kernel.
SHAPE_OPERANDS = {
    "Reshape": {1}, "Expand": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "Slice": {1, 2, 3, 4},
    "Unsqueeze": {1}, "Squeeze": {1}, "Tile": {1}, "Split": {1}, "Trilu": {1}, "CumSum": {1}, "Pad": {1, 3},
    **{op: {1} for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                          "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")},
}
# Ops that only reinterpret contiguous memory: the output aliases the input.
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
# Constants this small are folded into the kernel code instead of being passed as buffers.
INLINE_CONST_ELEMS = 1
MAX_ELEMENTS = 2**31 - 1    # kernels index a tensor with 32-bit integers
ALIGN = 64
GEMM_ROW_BLOCK = 4
GPU_ROW_BLOCK = 16
# Elementwise ops (numpy broadcasting) that chain into one fused kernel.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "LessOrEqual", "Greater",
               "GreaterOrEqual", "And", "Or", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Tanh", "Sigmoid",
               "Erf", "Sin", "Cos", "Relu", "Floor", "Ceil", "Not", "Gelu", "Softplus", "LeakyRelu", "Where",
               "Cast", "Clip"}


# Ops whose kernels broadcast an operand, so a one-element constant can be a literal (a MatMul or a
# Concat indexes its operands as tensors).
INLINE_OPS = ELEMENTWISE | {"QuantizeLinear", "DequantizeLinear"}


class LoweringError(QCompileError):
    phase = "lower"


@dataclass
class Step:
    """One kernel launch: node, the tensors it reads and writes, and symbolic scalars it needs."""
    node: Node
    inputs: list[str]              # data operands passed as buffers (order = kernel params)
    outputs: list[str]
    inline: dict[int, np.ndarray]  # input position -> small constant folded into the kernel
    kernel: str = ""               # kernel name, filled when kernels are deduplicated
    scalars: list[str] = field(default_factory=list)   # symbolic dims passed as int64 params
    materialize: tuple | None = None   # for a symbolic vector used as data: its dims
    # A GEMM over rows: A[rows..., K] x W[K, N] runs as a 2-D kernel on whole blocks of
    # `row_block` rows plus a tail kernel on the rest, so no tile needs a bounds check.
    row_block: int = 0
    tail_kernel: str = ""
    # Elementwise nodes fused into this step, in order (node, its inline constants); the last
    # is `node`. Values passed between them never reach memory.
    group: list = field(default_factory=list)
    # Node inputs passed in another storage format (a bf16 copy of an fp32 table): node name -> stored
    stored: dict = field(default_factory=dict)


@dataclass
class Storage:
    kind: str                      # input | weight | arena | view
    offset: int = 0                # arena or weight-blob byte offset
    base: str | None = None        # for views: the value whose memory this is
    max_bytes: int = 0


@dataclass
class Plan:
    graph: Graph
    steps: list[Step]
    storage: dict[str, Storage]
    symbols: list[str]
    bounds: dict[str, int]
    arena_bytes: int = 0
    weights: list[str] = field(default_factory=list)   # constant values in blob order
    weight_bytes: int = 0
    symbolic: SymValues = field(default_factory=dict)  # vectors of dims known at build time
    gpu: bool = False              # kernels for a GPU (make_plan's `gpu`)


def is_weight_gemm(g: Graph, step: Step) -> bool:
    """MatMul of activations [rows..., K] by a constant 2-D weight [K, N]."""
    n = step.node
    if n.op != "MatMul" or n.domain or len(step.inputs) != 2 or step.inline:
        return False
    a, w = (g.values[x] for x in step.inputs)
    return (w.const is not None and w.rank == 2 and a.const is None and (a.rank or 0) >= 2
            and step.inputs == [n.inputs[0], n.inputs[1]] and all(isinstance(d, int) for d in w.shape))


def gemm_panel(n: int, simd_bits: int = 512) -> int:
    """Columns per weight panel: what the GEMM template keeps in registers. A tile of 4 rows x P
    columns needs 4P/lanes accumulators: 16 of the 32 zmm registers for P = 64 with AVX-512; with
    16 registers (AVX2, NEON) P = 16 (64 would spill, about 3x slower measured on AVX2)."""
    widest = 64 if simd_bits >= 512 else 16
    return widest if n % widest == 0 else 16 if n % 16 == 0 else 1


def _packed_weight(g: Graph, name: str, storage: str, simd_bits: int) -> str:
    """W[K, N] -> W[N/P, K, P]: each panel of P columns is contiguous, streamed once per tile."""
    w = g.values[name].const
    k, n = w.shape
    p = gemm_panel(n, simd_bits)
    packed = f"{name}@panels{p}.{storage}"
    if packed not in g.values:
        panels = np.ascontiguousarray(w.reshape(k, n // p, p).transpose(1, 0, 2))
        dtype = _STORED.get(storage, g.values[name].dtype)
        g.add_value(packed, dtype, (n // p, k, p), const=panels.astype(dtype.np_dtype))
    return packed


def _transposed_weight(g: Graph, name: str, storage: str) -> str:
    """W[K, N] -> W[N, K] (the GPU layout: kernels tell it from the panels by its rank)."""
    stored = f"{name}@t.{storage}"
    if stored not in g.values:
        dtype = _STORED.get(storage, g.values[name].dtype)
        g.add_value(stored, dtype, tuple(reversed(g.values[name].shape)),
                    const=np.ascontiguousarray(g.values[name].const.T).astype(dtype.np_dtype))
    return stored


_STORED = {"bf16": dtypes.BF16, "fp16": dtypes.FP16}    # 16-bit storage of weights rounded to it


def _half_table(g: Graph, name: str, storage: str) -> str:
    stored = f"{name}@{storage}"
    if stored not in g.values:
        v = g.values[name]
        g.add_value(stored, _STORED[storage], v.shape, const=np.asarray(v.const).astype(_STORED[storage].np_dtype))
    return stored


def max_bytes(v: Value, bounds: dict[str, int]) -> int:
    return max_elements(v, bounds) * v.dtype.np_dtype.itemsize


def max_elements(v: Value, bounds: dict[str, int]) -> int:
    if v.shape is None:
        raise LoweringError(f"value '{v.name}' has an unknown rank", hint="run infer_shapes")
    count = 1
    for d in v.shape:
        if d is None:
            raise LoweringError(f"value '{v.name}' has an unknown dim in {list(v.shape)}")
        try:
            count *= dims.upper_bound(d, bounds)
        except ValueError as exc:     # e.g. ONNX shape inference's unk__N where the model's shapes disagree
            raise LoweringError(f"value '{v.name}' {list(v.shape)}: {exc}, so its storage cannot be sized",
                                hint="give the dim a bound (--dim NAME=N); a dim named unk__N comes from ONNX shape "
                                     "inference meeting shapes that disagree, so check the model") from None
    return count


def _check_sizes(g: Graph, bounds: dict[str, int]) -> None:
    """Every tensor fits 32-bit indexing at the dims' bounds (TVM would fail on it much later, in
    words about int32 constants)."""
    producer = {o: n for n in g.nodes for o in n.outputs if o}
    for name, v in g.values.items():
        try:
            count = max_elements(v, bounds)
        except LoweringError:   # an unknown dim or one with no bound: the arena's plan names it
            continue
        if count > MAX_ELEMENTS:
            n = producer.get(name)
            raise LoweringError(f"value '{name}' {list(v.shape)} holds up to {count:,} elements"
                                f"{f' at the bounds {bounds}' if bounds else ''}; a tensor may hold at most 2**31 - 1 (kernels index with "
                                "32-bit integers)", node=n.name if n else None, op=n.op_id if n else None,
                                hint="lower a symbolic dim's bound (--dim NAME=N, --max-seq-len N), or fix the "
                                     "model's shapes")


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def make_plan(g: Graph, bounds: dict[str, int], simd_bits: int = 512, gpu: bool = False) -> Plan:
    """GEMM weight panels are stored as the node's `qcompile.precision` says: bf16 or fp16
    (widened to fp32 in registers) or fp32, in panels as wide as the target's registers hold (simd_bits).
    gpu: weights transposed to W[N, K] instead (a warp reads one output's K contiguously), rows
    split into blocks of GPU_ROW_BLOCK (a tiled GEMM) and the rest (a low-batch GEMV: decode)."""
    _check_sizes(g, bounds)
    symbolic: SymValues = {}
    steps: list[Step] = []
    storage: dict[str, Storage] = {name: Storage("input") for name in g.inputs}
    for n in g.nodes:
        propagate_symbolic(g, n, symbolic)
        if all(o in symbolic for o in n.outputs if o):
            continue                       # a shape computation: evaluated here, at build time
        shape_ops = SHAPE_OPERANDS.get(n.op, set()) if not n.domain else set()
        for i, name in enumerate(n.inputs):
            if name and i in shape_ops and name not in symbolic and g.values[name].const is None:
                raise LoweringError(f"input {i} ('{name}') must be known at build time (a shape or axes), "
                                    "but it is computed at run time", node=n.name, op=n.op_id)
        if n.op in VIEW_OPS and not n.domain:
            storage[n.outputs[0]] = Storage("view", base=n.inputs[0])
            continue
        data, inline = [], {}
        for i, name in enumerate(n.inputs):
            if not name or i in shape_ops:
                continue
            v = g.values[name]
            if v.const is not None and v.const.size <= INLINE_CONST_ELEMS and n.op in INLINE_OPS:
                inline[i] = v.const
            elif name in symbolic and v.const is None and name not in storage:
                steps.append(Step(n, [], [name], {}, materialize=symbolic[name]))
                storage[name] = Storage("arena")
                data.append(name)
            elif name not in data:         # an operand read twice is passed once
                data.append(name)
        step = Step(n, data, [o for o in n.outputs if o], inline)
        half = n.attrs.get("qcompile.precision") if n.attrs.get("qcompile.precision") in _STORED else None
        if n.op == "Gather" and half and step.inputs[:1] == n.inputs[:1] and g.values[n.inputs[0]].const is not None:
            step.inputs[0] = step.stored[n.inputs[0]] = _half_table(g, n.inputs[0], half)   # widened as rows are read
        if is_weight_gemm(g, step):
            step.row_block = GPU_ROW_BLOCK if gpu else GEMM_ROW_BLOCK
            panel_dtype = half or "fp32"
            step.inputs[1] = (_transposed_weight(g, step.inputs[1], panel_dtype) if gpu
                              else _packed_weight(g, step.inputs[1], panel_dtype, simd_bits))
        steps.append(step)
        for o in n.outputs:
            if o:
                storage[o] = Storage("arena")
    steps = _fuse_elementwise(g, steps, storage)
    plan = Plan(g, steps, storage, sorted(dims.symbols_of(_all_shapes(g))), dict(bounds), symbolic=symbolic, gpu=gpu)
    _place_weights(plan)
    _plan_arena(plan)
    return plan


def _fusable(step: Step) -> bool:
    return (step.node.op in ELEMENTWISE and not step.node.domain and not step.materialize
            and not step.row_block and len(step.outputs) == 1)


def _fuse_elementwise(g: Graph, steps: list[Step], storage: dict[str, Storage]) -> list[Step]:
    """Chain an elementwise step into the previous one when it is the only reader of its output."""
    readers: dict[str, int] = {}
    for n in g.nodes:
        for name in n.inputs:
            if name:
                readers[name] = readers.get(name, 0) + 1
    outputs = set(g.outputs)
    fused: list[Step] = []
    for step in steps:
        prev = fused[-1] if fused else None
        link = prev.outputs[0] if prev and _fusable(prev) else None
        if (link and _fusable(step) and link in step.node.inputs and readers.get(link) == 1
                and link not in outputs and storage.get(link, Storage("")).kind == "arena"):
            group = prev.group or [(prev.node, prev.inline)]
            inputs = prev.inputs + [x for x in step.inputs if x != link and x not in prev.inputs]
            fused[-1] = Step(step.node, inputs, step.outputs, {}, group=group + [(step.node, step.inline)])
            del storage[link]      # lives in registers only
        else:
            fused.append(step)
    return fused


def _all_shapes(g: Graph):
    for name in list(g.inputs) + list(g.outputs):
        yield from g.values[name].shape or ()
    for v in g.values.values():
        if v.const is None:
            yield from (d for d in (v.shape or ()) if d is not None)


def _place_weights(plan: Plan) -> None:
    # graph outputs too: one that folded to a constant (it never read the inputs) is copied out
    used = {name for s in plan.steps for name in s.inputs} | set(plan.graph.outputs)
    offset = 0
    for name in sorted(used):
        v = plan.graph.values[name]
        if v.const is None:
            continue
        plan.storage[name] = Storage("weight", offset=offset, max_bytes=v.const.nbytes)
        plan.weights.append(name)
        offset = _align(offset + v.const.nbytes)
    plan.weight_bytes = offset


def resolve(plan: Plan, name: str) -> str:
    """Follow views to the value that owns the memory."""
    while plan.storage[name].kind == "view":
        name = plan.storage[name].base
    return name


def _plan_arena(plan: Plan) -> None:
    """Liveness-based static arena: each arena value gets an offset no live value overlaps."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        for name in step.outputs:
            first.setdefault(resolve(plan, name), i)
        for name in step.inputs:
            last[resolve(plan, name)] = i
    end = len(plan.steps)
    for name in plan.graph.outputs:
        last[resolve(plan, name)] = end
    arena = [n for n, st in plan.storage.items() if st.kind == "arena"]
    for name in arena:
        plan.storage[name].max_bytes = max_bytes(plan.graph.values[name], plan.bounds)
    placed: list[tuple[int, int, int, int]] = []      # offset, size, first, last
    for name in sorted(arena, key=lambda n: (-plan.storage[n].max_bytes, n)):
        size = _align(max(plan.storage[name].max_bytes, 1))
        lo, hi = first.get(name, 0), last.get(name, first.get(name, 0))

        def clash(offset: int, o: int, s: int, f: int, l: int) -> bool:
            """Block (o, s) is alive during [lo, hi] and overlaps [offset, offset + size)."""
            return f <= hi and lo <= l and offset < o + s and o < offset + size

        offset = 0
        for block in sorted(placed):             # first fit, lowest blocks first
            if clash(offset, *block):
                offset = _align(block[0] + block[1])
        # moving past one block may have landed on an earlier one: repeat until clear
        while ends := [o + s for o, s, f, l in placed if clash(offset, o, s, f, l)]:
            offset = _align(max(ends))
        placed.append((offset, size, lo, hi))
        plan.storage[name].offset = offset
    plan.arena_bytes = max((o + s for o, s, _, _ in placed), default=0)
