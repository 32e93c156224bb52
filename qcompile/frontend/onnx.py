"""ONNX -> IR. Load, check, infer shapes, check coverage, then convert.

Every failure becomes a QCompileError that names the file, node, op and opset; no protobuf or
checker traceback reaches the user.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import InvalidModelError, ModelLoadError, UnsupportedOpsError, VerifyError
from ..ir import dtypes
from ..ir.graph import Graph, Node
from ..ir.interpret import run_node, supported_ops
from ..ir.shape_rules import fill_types
from ..ir.verify import verify
from .opset import ATTR_TO_INPUT, COERCE_2D_BEFORE_13, LEGACY_BROADCAST_BEFORE_7, MAX_OPSET, MIN_OPSET

_TWO_GB = 2 ** 31 - 1
_ONNX_DOMAINS = ("", "ai.onnx")


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an .onnx file (and its external data) with errors a user can act on."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"'{path}': no such file")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a directory; give the .onnx file inside it")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"'{path}' is empty (0 bytes)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        with open(path, "rb") as f:
            head = f.read(64)
        kind = "a text file" if _looks_like_text(head) else "not a valid ONNX protobuf"
        raise ModelLoadError(f"'{path}' ({size} bytes) is {kind}: it does not parse as an ONNX model; "
                             "if it was copied or downloaded, it may be truncated or corrupted") from None
    except Exception as exc:
        raise ModelLoadError(f"'{path}' could not be read: {exc}") from None
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelLoadError(f"'{path}' parses as protobuf but holds no ONNX model (no graph or ir_version)",
                             hint="is this really an .onnx file?")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"'{path}' refers to external data that is missing: {exc.filename or exc}",
                             hint="keep the .onnx file next to its .data file(s)") from None
    except Exception as exc:
        raise ModelLoadError(f"'{path}': its external data could not be loaded: {exc}") from None
    return model


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 32 or c in b"\t\r\n" for c in head)


def load(path: str | os.PathLike, dim_bounds: dict[str, int] | None = None) -> Graph:
    """Load an ONNX file and convert it to the IR."""
    model = load_proto(path)
    return from_proto(model, name=Path(path).stem, dim_bounds=dim_bounds)


def from_proto(model: onnx.ModelProto, name: str | None = None,
               dim_bounds: dict[str, int] | None = None) -> Graph:
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    check_opset(opsets)
    check_names(model.graph)
    check_dangling(model.graph)
    check_coverage(model.graph, opsets)
    check_model(model)
    model = infer_shapes(model)
    graph = convert(model, name or model.graph.name or "model", opsets)
    graph.dim_bounds.update(dim_bounds or {})
    try:
        verify(graph)
    except VerifyError as exc:
        exc.phase = "import"
        raise
    return graph


def check_opset(opsets: dict[str, int]) -> None:
    version = opsets.get("", opsets.get("ai.onnx"))
    if version is None:
        raise InvalidModelError("the model imports no default-domain (ai.onnx) opset")
    if version < MIN_OPSET:
        raise UnsupportedOpsError(
            f"the model uses opset {version}; qcompile reads opsets {MIN_OPSET} to {MAX_OPSET}", {},
            opset=version, hint="upgrade it first: python -c \"import onnx, onnx.version_converter as v; "
                                "onnx.save(v.convert_version(onnx.load('in.onnx'), 17), 'out.onnx')\"")
    if version > MAX_OPSET:
        raise UnsupportedOpsError(
            f"the model uses opset {version}, newer than the installed onnx knows ({MAX_OPSET})", {},
            opset=version, hint="upgrade the onnx package, or export with an older opset")


def check_dangling(graph: onnx.GraphProto) -> None:
    """Name the first node input that nothing defines (a missing initializer, usually)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    defined |= {o for n in graph.node for o in n.output}
    for i, n in enumerate(graph.node):
        for name in n.input:
            if name not in defined:
                raise InvalidModelError(
                    f"input '{name}' is not a graph input, an initializer, or the output of any node",
                    node=n.name or f"#{i}", op=n.op_type,
                    hint="the model is missing an initializer; was it saved with its weights?")
    for out in graph.output:
        if out.name not in defined:
            raise InvalidModelError(f"graph output '{out.name}' is never produced")


def find_unsupported(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """Op id -> names of the nodes using it, for every op the IR cannot represent or run."""
    known = supported_ops()
    missing: dict[str, list[str]] = defaultdict(list)
    for i, n in enumerate(graph.node):
        op_id = op_id_of(n)
        if op_id not in known:
            missing[op_id].append(n.name or f"#{i}")
        elif any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            missing[op_id + " (with subgraphs)"].append(n.name or f"#{i}")
    return dict(sorted(missing.items()))


def op_id_of(n: onnx.NodeProto) -> str:
    return n.op_type if n.domain in _ONNX_DOMAINS else f"{n.domain}.{n.op_type}"


def check_coverage(graph: onnx.GraphProto, opsets: dict[str, int]) -> None:
    """Raise ONE error listing every unsupported op type with its node names."""
    missing = find_unsupported(graph)
    if not missing:
        return
    opset = opsets.get("", opsets.get("ai.onnx"))
    lines = []
    for op_id, names in missing.items():
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} nodes)" if len(names) > 5 else "")
        lines.append(f"  {op_id}: {shown}")
    raise UnsupportedOpsError(
        f"{len(missing)} op type(s) in this model (opset {opset}) are not supported:\n" + "\n".join(lines),
        missing, opset=opset, hint="`qcompile inspect MODEL` lists coverage; please report the ops you need")


def check_names(graph: onnx.GraphProto) -> None:
    """Names that are not UTF-8 (protobuf hands them over as bytes): a damaged file."""
    named = [("graph input", v.name) for v in graph.input] + [("graph output", v.name) for v in graph.output]
    named += [("initializer", t.name) for t in graph.initializer]
    for n in graph.node:
        named += [("node", n.name), ("op", n.op_type), ("domain", n.domain)]
        named += [(f"value of node {n.name!r}", x) for x in [*n.input, *n.output]]
        named += [(f"attribute of node {n.name!r}", a.name) for a in n.attribute]
    bad = [(what, name) for what, name in named if not isinstance(name, str)]
    if bad:
        what, name = bad[0]
        raise InvalidModelError(f"{len(bad)} name(s) in the model are not valid UTF-8, the first a {what}: {name[:60]!r}; "
                                f"the file is corrupted", hint="copy or download the model again")


def check_model(model: onnx.ModelProto) -> None:
    try:
        if model.ByteSize() < _TWO_GB:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        text = str(exc).strip().splitlines()
        raise InvalidModelError("the ONNX checker rejected the model: " + " ".join(t.strip() for t in text),
                                hint="re-export the model, or run onnx.checker.check_model on it for details") from None
    except UnicodeDecodeError as exc:     # a string field's bytes are not UTF-8: damaged in transit
        raise InvalidModelError(f"a name or string in the model is not valid UTF-8 ({exc.reason} at byte "
                                f"{exc.start} of {exc.object[:40]!r}): the file is corrupted",
                                hint="copy or download the model again") from None


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    if model.ByteSize() >= _TWO_GB:
        return model    # onnx's in-memory inference cannot hold it; our rules fill the types
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise InvalidModelError(f"ONNX shape inference failed: {exc}") from None


# -- conversion ---------------------------------------------------------------------------------

def shape_of(type_proto: onnx.TypeProto):
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _dtype_of(type_proto: onnx.TypeProto, where: str):
    if not type_proto.HasField("tensor_type"):
        raise InvalidModelError(f"{where} is not a tensor (sequences, maps and optionals are not supported)")
    code = type_proto.tensor_type.elem_type
    if code == 0:
        return None
    try:
        return dtypes.from_onnx(code)
    except ValueError:
        raise UnsupportedOpsError(f"{where} has ONNX element type "
                                  f"{onnx.TensorProto.DataType.Name(code)}, which qcompile does not support", {}) from None


def attribute_value(attr: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    if isinstance(value, list) and value and isinstance(value[0], onnx.TensorProto):
        return [numpy_helper.to_array(v) for v in value]
    return value


def convert(model: onnx.ModelProto, name: str, opsets: dict[str, int]) -> Graph:
    onnx_graph = model.graph
    g = Graph(name, {("" if d == "ai.onnx" else d): v for d, v in opsets.items()})
    g.metadata = {"producer": f"{model.producer_name} {model.producer_version}".strip(),
                  "ir_version": str(model.ir_version)}
    opset = opsets.get("", opsets.get("ai.onnx"))

    for init in onnx_graph.initializer:
        try:
            array = numpy_helper.to_array(init)
        except Exception as exc:
            raise InvalidModelError(f"initializer '{init.name}' cannot be read: {exc}",
                                    hint="its data size may not match its declared shape") from None
        g.add_value(init.name, _array_dtype(init.data_type, array, init.name), array.shape, const=array)
    for inp in onnx_graph.input:
        if inp.name in g.values:
            continue   # IR<4 models list initializers as inputs too; the initializer wins
        dt = _dtype_of(inp.type, f"graph input '{inp.name}'")
        if dt is None:
            raise InvalidModelError(f"graph input '{inp.name}' has no element type")
        g.add_input(inp.name, dt, shape_of(inp.type))

    known_types = {vi.name: vi for vi in list(onnx_graph.value_info) + list(onnx_graph.output)}
    for i, n in enumerate(onnx_graph.node):
        node_name = n.name or f"{n.op_type}_{i}"
        attrs = {a.name: attribute_value(a) for a in n.attribute}
        domain = "" if n.domain in _ONNX_DOMAINS else n.domain
        node = Node(g.unique_name(node_name), n.op_type, list(n.input), list(n.output), attrs, domain)
        for out in n.output:
            if out and out not in g.values:
                vi = known_types.get(out)
                dt = _dtype_of(vi.type, f"value '{out}'") if vi is not None else None
                g.add_value(out, dt, shape_of(vi.type) if vi is not None else None)
        if n.op_type == "Constant" and not domain:
            _fold_constant(g, node)
            continue
        if not domain:
            _upgrade(g, node, opset)
        else:
            g.nodes.append(node)
    g.outputs = [o.name for o in onnx_graph.output]
    fill_types(g)
    return g


def _array_dtype(code: int, array: np.ndarray, name: str):
    try:
        return dtypes.from_onnx(code)
    except ValueError:
        raise UnsupportedOpsError(f"initializer '{name}' has ONNX element type "
                                  f"{onnx.TensorProto.DataType.Name(code)}, which qcompile does not support", {}) from None


def _fold_constant(g: Graph, node: Node) -> None:
    """A Constant node becomes a constant value directly."""
    (array,) = run_node(node, [])
    value = g.values[node.outputs[0]]
    value.const = array if value.dtype is None or array.dtype == value.dtype.np_dtype or array.dtype == object \
        else array.astype(value.dtype.np_dtype)
    if value.dtype is None:
        value.dtype = dtypes.from_numpy(array.dtype)
    value.shape = tuple(int(d) for d in array.shape)


def _upgrade(g: Graph, node: Node, opset: int) -> None:
    """Append node to g in newest-opset form (attributes that became inputs move to inputs)."""
    if node.op in LEGACY_BROADCAST_BEFORE_7 and opset < 7 and node.attrs.pop("broadcast", 0):
        if "axis" in node.attrs:
            _align_operand(g, node, node.attrs.pop("axis"))
    elif node.op == "PRelu" and opset < 7:
        _align_operand(g, node, 1)     # a 1-D slope then meant one value per channel
    node.attrs.pop("consumed_inputs", None)   # opset<6 memory hint, no meaning now
    for attr, position, since, np_type in ATTR_TO_INPUT.get(node.op, ()):
        if opset >= since or attr not in node.attrs:
            continue
        value = np.asarray(node.attrs.pop(attr), dtype=np_type)
        if node.op == "Clip" and node.inputs:   # bounds take the input's type
            xt = g.values[node.inputs[0]].dtype
            value = value.astype(xt.np_dtype) if xt is not None else value
        const = g.add_const(f"{node.name}_{attr}", value)
        node.inputs += [""] * (position + 1 - len(node.inputs))
        node.inputs[position] = const.name
    if node.op in COERCE_2D_BEFORE_13 and opset < 13:
        _coerce_2d(g, node)
        return
    g.nodes.append(node)


def _align_operand(g: Graph, node: Node, axis: int) -> None:
    """Opset<7 broadcasting: input 1 lines up with input 0 starting at `axis`, not at the end."""
    a, b = (g.values[name] for name in node.inputs[:2])
    if a.shape is None or b.shape is None:
        raise UnsupportedOpsError("opset<7 axis-aligned broadcasting needs both operand ranks known",
                                  {node.op: [node.name]}, node=node.name, op=node.op,
                                  hint="upgrade the model to opset 7 or newer with onnx.version_converter")
    trailing = len(a.shape) - (axis % max(len(a.shape), 1)) - len(b.shape)
    if trailing <= 0:
        return
    axes = g.add_const(f"{node.name}_align_axes", np.arange(len(b.shape), len(b.shape) + trailing, dtype=np.int64))
    aligned = g.add_value(g.unique_name(f"{b.name}_aligned"), b.dtype, tuple(b.shape) + (1,) * trailing)
    g.add_node("Unsqueeze", [b.name, axes.name], [aligned.name], name=f"{node.name}_align")
    node.inputs[1] = aligned.name


def _coerce_2d(g: Graph, node: Node) -> None:
    """Softmax-like ops before opset 13: flatten to 2-D at axis, apply on axis 1, restore shape."""
    x, y = node.inputs[0], node.outputs[0]
    axis = node.attrs.get("axis", 1)
    shape = g.add_value(g.unique_name(f"{y}_shape"), dtypes.INT64, None)
    flat = g.add_value(g.unique_name(f"{y}_2d"), g.values[x].dtype, None)
    out2d = g.add_value(g.unique_name(f"{y}_2d_out"), g.values[x].dtype, None)
    g.add_node("Shape", [x], [shape.name], name=f"{node.name}_shape")
    g.add_node("Flatten", [x], [flat.name], {"axis": axis}, name=f"{node.name}_flatten")
    g.add_node(node.op, [flat.name], [out2d.name], {"axis": 1}, name=node.name + "_2d")
    g.add_node("Reshape", [out2d.name, shape.name], [y], name=f"{node.name}_reshape")
