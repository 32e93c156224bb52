#!/usr/bin/env python3
"""Dynamic AArch64 instruction counts under qemu-user, without TCG plugins (Debian's qemu 7.2 ships
none).

qemu runs the program with ``-d in_asm,exec,nochain``: ``in_asm`` prints every translation block
(TB) once, when it is translated, with one line per guest instruction; ``exec`` prints one
``Trace`` line each time a TB starts executing; ``nochain`` stops qemu from chaining TBs, so every
TB entry is logged.  A TB is only left early by an exception, which a plain user program does not
raise except at its syscalls, and ``svc`` ends a TB anyway, so

    executed instructions = sum over Trace lines of the size of the TB they name.

TBs are identified by their host code address (several TBs can start at one guest pc); the log
streams through a FIFO, so traces far larger than the disk are fine.  Translation happens once per
TB (or again after a TB flush; the parser follows the log in order), so the count is exact.
``--selftest`` checks it against a loop of known length, and against ``-singlestep`` (one
instruction per TB: the count is simply the number of Trace lines) on a small kernel run.

To isolate a kernel, count the same program twice with a different number of kernel calls and
subtract (``--base``): setup, process start and teardown cancel exactly.

  python tools/arm_insn_count.py -- ./prog args...               total, top symbols and TBs
  python tools/arm_insn_count.py --base "run lut1 1024 1024 1" -- ./prog run lut1 1024 1024 2
  python tools/arm_insn_count.py --selftest
  python tools/arm_insn_count.py ternary [--shapes 1024x1024,2048x2048]   issue-5 table
  python tools/arm_insn_count.py loops ./prog.o FUNC...           static loop sizes (objdump)
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

QEMU, CC, OBJDUMP = "qemu-aarch64", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objdump"
SYSROOT = "/usr/aarch64-linux-gnu"
ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "qcompile" / "artifact" / "runtime"
LUT_SRC = ROOT / "tests" / "c" / "ternary_lut_neon.c"

_TRACE = re.compile(r"^Trace \d+: (0x[0-9a-f]+) \[[0-9a-f]+/([0-9a-f]+)/[0-9a-f]+/[0-9a-f]+\] ?(.*)$")
_INSN = re.compile(r"^(0x[0-9a-f]+):\s")


@dataclass
class Count:
    total: int = 0
    tb_execs: int = 0
    by_symbol: collections.Counter = field(default_factory=collections.Counter)
    # (guest pc, size, symbol) -> executions
    by_tb: collections.Counter = field(default_factory=collections.Counter)
    stdout: str = ""
    returncode: int = 0

    def __sub__(self, other: "Count") -> "Count":
        d = Count(self.total - other.total, self.tb_execs - other.tb_execs)
        d.by_symbol = collections.Counter(self.by_symbol)
        d.by_symbol.subtract(other.by_symbol)
        d.by_tb = collections.Counter(self.by_tb)
        d.by_tb.subtract(other.by_tb)
        return d


def _parse(stream, count: Count) -> None:
    size_by_host: dict[str, int] = {}
    size_by_pc: dict[int, int] = {}
    pending = None  # (first guest pc, size) of the last IN: block not yet matched to a Trace line
    in_block, first, n = False, None, 0
    for line in stream:
        if line.startswith("Trace "):
            m = _TRACE.match(line)
            if not m:
                continue
            host, pc, sym = m.group(1), int(m.group(2), 16), m.group(3).strip()
            if pending is not None and pending[0] == pc:
                size_by_host[host] = pending[1]
                pending = None
            size = size_by_host.get(host)
            if size is None:
                size = size_by_pc.get(pc)
                if size is None:
                    raise RuntimeError(f"Trace of an untranslated TB at {pc:#x}")
            count.total += size
            count.tb_execs += 1
            count.by_symbol[sym or "?"] += size
            count.by_tb[pc, size, sym or "?"] += 1
        elif line.startswith("IN:"):
            in_block, first, n = True, None, 0
        elif in_block:
            m = _INSN.match(line)
            if m:
                if first is None:
                    first = int(m.group(1), 16)
                n += 1
            elif not line.strip() and first is not None:
                in_block = False
                pending = (first, n)
                size_by_pc[first] = n


def count(argv: list[str], cpu: str = "max", singlestep: bool = False, timeout: float = 600) -> Count:
    """Executed guest instructions of one run of argv under qemu-aarch64."""
    c = Count()
    with tempfile.TemporaryDirectory() as tmp:
        fifo = os.path.join(tmp, "log")
        os.mkfifo(fifo)
        flags = "exec,nochain" if singlestep else "in_asm,exec,nochain"
        cmd = [QEMU, "-cpu", cpu, "-L", SYSROOT, *(["-singlestep"] if singlestep else []),
               "-d", flags, "-D", fifo, *argv]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out: dict[str, str] = {}
        reader = threading.Thread(target=lambda: out.update(o=proc.stdout.read(), e=proc.stderr.read()))
        reader.start()
        with open(fifo, "r", errors="replace", buffering=1 << 20) as f:
            if singlestep:
                for line in f:
                    if line.startswith("Trace "):
                        c.total += 1
                        c.tb_execs += 1
            else:
                _parse(f, c)
        proc.wait(timeout=timeout)
        reader.join()
        c.stdout, c.returncode = out.get("o", ""), proc.returncode
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} -> {proc.returncode}\n{out.get('e', '')}")
    return c


def count_diff(argv_hi: list[str], argv_lo: list[str], cpu: str = "max") -> Count:
    """count(argv_hi) - count(argv_lo), the two runs in parallel."""
    res: dict[int, Count] = {}
    errs: list[BaseException] = []

    def one(i, a):
        try:
            res[i] = count(a, cpu)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errs.append(e)

    ts = [threading.Thread(target=one, args=(i, a)) for i, a in enumerate((argv_hi, argv_lo))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    return res[0] - res[1]


def _report(c: Count, top: int = 8) -> None:
    print(f"instructions {c.total}  TB executions {c.tb_execs}")
    for sym, n in c.by_symbol.most_common(top):
        if n:
            print(f"  {n:>14}  {sym}")
    print("  hottest TBs (pc, size, symbol: executions, instructions):")
    for (pc, size, sym), e in sorted(c.by_tb.items(), key=lambda kv: -kv[0][1] * kv[1])[:top]:
        if e:
            print(f"    {pc:#x} {size:4d} {sym:<24} {e:>10} {e * size:>12}")


# ------------------------------------------------------------------ builds
def build(src: list[Path], march: str, out: Path, extra: list[str] | None = None) -> Path:
    cmd = [CC, "-std=gnu11", "-O3", "-Wall", "-Werror", f"-march={march}", f"-I{RUNTIME}",
           *(extra or []), *map(str, src), "-o", str(out), "-lm"]
    subprocess.run(cmd, check=True)
    return out


def loops(obj: Path, funcs: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Static loops per function from objdump: (start address, instructions) of each backward branch
    target .. branch, innermost (smallest) first."""
    dis = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", str(obj)], capture_output=True,
                         text=True, check=True).stdout
    res = {}
    for fn in funcs:
        m = re.search(rf"^[0-9a-f]+ <{re.escape(fn)}>:\n(.*?)(?:\n\n|\Z)", dis, re.S | re.M)
        if not m:
            continue
        found = []
        for line in m.group(1).splitlines():
            mm = re.match(r"\s*([0-9a-f]+):\s+(b\.\w+|b|cbn?z|tbn?z)\s+.*?([0-9a-f]+) <", line)
            if mm:
                addr, tgt = int(mm.group(1), 16), int(mm.group(3), 16)
                if tgt <= addr:
                    found.append((tgt, (addr - tgt) // 4 + 1))
        res[fn] = sorted(set(found), key=lambda t: t[1])
    return res


def selftest(tmp: Path) -> None:
    exe = build([LUT_SRC, RUNTIME / "qc_qlinear.c"], "armv8-a", tmp / "lut_v80")
    d = count_diff([str(exe), "loop", "3000"], [str(exe), "loop", "1000"])
    assert d.total == 3 * 2000, d.total
    print(f"selftest: loop 3000 - loop 1000 = {d.total} instructions (expected 6000): ok")
    for kern in ("lut1", "mul"):
        args = [str(exe), "run", kern, "64", "64", "1"]
        a, b = count(args), count(args, singlestep=True)
        assert a.total == b.total, (kern, a.total, b.total)
        print(f"selftest: {kern} 64x64 whole run: TB-size count {a.total} == -singlestep count "
              f"{b.total}: ok")


# ------------------------------------------------------------------ issue 5 table
VARIANTS = [  # (name, kernel arg, march)
    ("lut1 (ld4+tbl1), armv8-a", "lut1", "armv8-a"),
    ("lut4 (tbl4, same lanes), armv8-a", "lut4", "armv8-a"),
    ("mul (smlal), armv8-a", "mul", "armv8-a"),
    ("qc_qlinear sdot, armv8.2-a+dotprod", "qc", "armv8.2-a+dotprod"),
    ("qc_qlinear armv8.0 NEON (lut1 at M=1), armv8-a", "qc", "armv8-a"),
    ("qc_qlinear scalar C, armv8-a+nosimd", "qc", "armv8-a+nosimd"),
]


def ternary_table(shapes: list[tuple[int, int]], tmp: Path, variants=VARIANTS) -> list[dict]:
    exes = {m: build([LUT_SRC, RUNTIME / "qc_qlinear.c"], m,
                     tmp / f"lut_{m.replace('.', '_').replace('+', '_')}")
            for m in sorted({v[2] for v in variants})}
    rows = []
    for K, N in shapes:
        for name, kern, march in variants:
            exe = str(exes[march])
            d = count_diff([exe, "run", kern, str(K), str(N), "2"],
                           [exe, "run", kern, str(K), str(N), "1"])
            rows.append(dict(variant=name, K=K, N=N, insns=d.total, per64=d.total * 64 / (K * N),
                             per_byte=d.total * 4 / (K * N), hot=d.by_symbol.most_common(3)))
            r = rows[-1]
            print(f"{name:<38} {K:>5}x{N:<5} {r['insns']:>12} insns  {r['per64']:7.2f} /64 w  "
                  f"{r['per_byte']:6.3f} /w-byte   {[(s, n) for s, n in r['hot'] if n]}", flush=True)
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "ternary":
        ap = argparse.ArgumentParser(prog="arm_insn_count.py ternary")
        ap.add_argument("--shapes", default="1024x1024,2048x2048")
        ap.add_argument("--keep", help="directory for the binaries (default: temporary)")
        a = ap.parse_args(sys.argv[2:])
        shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
        if a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            ternary_table(shapes, Path(a.keep))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ternary_table(shapes, Path(tmp))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "loops":
        for fn, ls in loops(Path(sys.argv[2]), sys.argv[3:]).items():
            print(fn, ", ".join(f"{a:#x}:{n}" for a, n in ls))
        return 0
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", default="max")
    ap.add_argument("--base", help="arguments of the baseline run of the same program (subtracted)")
    ap.add_argument("--singlestep", action="store_true", help="one instruction per TB (slow)")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("argv", nargs="*")
    a = ap.parse_args()
    for tool in (QEMU, CC) if a.selftest else (QEMU,):
        if shutil.which(tool) is None:
            print(f"{tool} not installed", file=sys.stderr)
            return 2
    if a.selftest:
        with tempfile.TemporaryDirectory() as tmp:
            selftest(Path(tmp))
        return 0
    if not a.argv:
        ap.error("no program given")
    if a.base is not None:
        c = count_diff(a.argv, [a.argv[0], *shlex.split(a.base)], a.cpu)
    else:
        c = count(a.argv, a.cpu, a.singlestep)
        sys.stdout.write(c.stdout)
    _report(c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
