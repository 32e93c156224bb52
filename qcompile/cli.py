"""The `qcompile` command line. It parses arguments and calls qcompile.api; nothing more."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from . import __version__

DESCRIPTION = """\
qcompile turns a trained network (ONNX) into one self-contained native library for one target,
with quantization done by the compiler.

  qcompile inspect model.onnx            what is in a model, and whether qcompile can compile it
  qcompile inspect model.onnx --ir       the model in qcompile's IR, after the pass pipeline
  qcompile targets                       the target presets (--target NAME)
  qcompile passes                        the graph passes and the pipelines that run them

Set QCOMPILE_DEBUG=1 to verify the IR after every pass and to see full tracebacks.
"""

INSPECT_HELP = """\
Print a model's inputs and outputs (symbolic dims kept), parameter count and bytes, the op
histogram, and every op qcompile does not support (with the nodes that use it). With --ir, also
convert it to qcompile's IR, run a pass pipeline and print the result in its text form."""

EPILOG = "Docs and issues: see README.md. Exit status: 0 ok, 1 a qcompile error (explained), 2 bad usage."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qcompile", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"qcompile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="summarize a model and its op coverage", description=INSPECT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="path to an .onnx file (external data files next to it are read too)")
    p.add_argument("--ir", action="store_true", help="print the IR after the pass pipeline")
    p.add_argument("--pipeline", default="default", metavar="NAME",
                   help="pass pipeline to run for --ir/--timing (see `qcompile passes`; default: %(default)s)")
    p.add_argument("--timing", action="store_true", help="print the time each pass took")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR (NNN_phase_pass.txt)")
    p.add_argument("--max-seq-len", type=int, metavar="N",
                   help="upper bound for symbolic sequence dims (seq, past, ...) recorded on the graph")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("targets", help="list target presets",
                       description="List the target presets that --target accepts, with their TVM target, the CPU "
                                   "features a library built for them requires, their toolchain and their status.")
    p.add_argument("--json", action="store_true", help="print the presets as JSON")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("passes", help="list graph passes and pipelines",
                       description="List every registered graph pass and the named pipelines (phases of passes).")
    p.set_defaults(func=cmd_passes)
    return parser


def cmd_inspect(args) -> int:
    from . import api
    info = api.inspect(args.model)
    graph, report = info.graph, None
    if graph is not None:
        if args.max_seq_len:
            graph.dim_bounds.update({d: args.max_seq_len for d in _symbolic_dims(graph)})
        if args.ir or args.timing or args.dump_ir:
            graph, report = api.optimize(graph, args.pipeline, dump_ir=args.dump_ir)
    if args.json:
        payload = {k: v for k, v in vars(info).items() if k != "graph"}
        payload["inputs"] = [vars(t) for t in info.inputs]
        payload["outputs"] = [vars(t) for t in info.outputs]
        print(json.dumps(payload, indent=2, default=str))
        return 0
    print(info.render())
    if report is not None and args.timing:
        print(f"\npipeline '{report.pipeline}':\n{report.table()}")
    if args.dump_ir and report is not None:
        print(f"\nIR after every pass written to {args.dump_ir}/")
    if args.ir and graph is not None:
        print()
        print(graph, end="")
    return 0


def _symbolic_dims(graph) -> set[str]:
    """Symbolic input dims that --max-seq-len bounds: all but batch-like ones."""
    return {d for name in graph.inputs for d in (graph.values[name].shape or ())
            if isinstance(d, str) and "batch" not in d.lower()}


def cmd_targets(args) -> int:
    from .targets.presets import PRESETS
    if args.json:
        print(json.dumps({name: vars(p) for name, p in PRESETS.items()}, indent=2, default=list))
        return 0
    width = max(len(n) for n in PRESETS)
    print(f"{'target':<{width}}  {'status':<10}  description")
    for p in PRESETS.values():
        print(f"{p.name:<{width}}  {p.status:<10}  {p.summary}")
        target = json.dumps(p.tvm_target)
        features = ", ".join(p.cpu_features) or "-"
        print(f"{'':<{width}}  {'':<10}  tvm {target}; needs {features}; toolchain {p.toolchain}")
    return 0


def cmd_passes(args) -> int:
    from .passes import PASSES, PIPELINES
    width = max(len(n) for n in PASSES)
    print("passes:")
    for name in sorted(PASSES):
        print(f"  {name:<{width}}  {PASSES[name].doc}")
    print("pipelines:")
    for name, phases in PIPELINES.items():
        print(f"  {name}: " + " | ".join(f"{ph.name}: {', '.join(ph.passes)}" for ph in phases))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import QCompileError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except QCompileError as exc:
        if os.environ.get("QCOMPILE_DEBUG"):
            traceback.print_exc()
        print(f"qcompile: error: {exc}", file=sys.stderr)
        return 1
    except KeyError as exc:      # unknown pipeline / target / pass names
        print(f"qcompile: error: {exc.args[0]}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
