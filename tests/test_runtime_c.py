"""The artifact's C runtime (qcompile/artifact/runtime/qc_runtime.c), exercised
through a C driver (tests/c/runtime_driver.c) compiled with gcc: thread pool,
TVM hooks, kernel errors across threads, workspace, CPU features, checksum;
plus a ThreadSanitizer run and warning-free / cross (aarch64) compiles."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qcompile.artifact import runtime

DRIVER = Path(__file__).parent / "c" / "runtime_driver.c"
RUNTIME_C = runtime.sources()
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror"]


def _compile(out: Path, *, cc="gcc", extra=(), sources=None, link=True):
    srcs = [str(s) for s in (sources if sources is not None else [DRIVER, *RUNTIME_C])]
    cmd = [cc, *CFLAGS, *extra, f"-I{runtime.RUNTIME_DIR}", *srcs, "-o", str(out)]
    if link:
        cmd.append("-pthread")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr  # no warnings at all
    return out


def _run(exe: Path, *args, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QCOMPILE_")}
    full_env.update(env or {})
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip().endswith("OK"), proc.stdout
    return proc


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("rt") / "runtime_driver", extra=["-O2"])


# --------------------------------------------------------------------------- pool


@pytest.mark.parametrize("spin_us", [None, "0"], ids=["spin", "sleep"])
def test_launch_runs_every_task_once(driver, spin_us):
    # pools of 1, 2, 4 threads; 1, size, 3*size, size+-1 and 0 (= pool size) tasks;
    # task ids exactly once, penv->num_task right, static split over the threads
    env = {"QCOMPILE_SPIN_US": spin_us} if spin_us else {}
    _ok(_run(driver, "pool", 200, env=env))


@pytest.mark.parametrize("spin_us", [None, "0"], ids=["spin", "sleep"])
def test_two_threads_with_own_pools_launch_concurrently(driver, spin_us):
    env = {"QCOMPILE_SPIN_US": spin_us} if spin_us else {}
    _ok(_run(driver, "concurrent", 3000, env=env))


def test_nested_launch_runs_serially(driver):
    _ok(_run(driver, "nested", timeout=30))


def test_kernel_error_in_worker_reaches_caller(driver):
    _ok(_run(driver, "error"))


def test_workspace_alignment_and_free(driver):
    _ok(_run(driver, "workspace"))


def test_num_threads_env(driver):
    assert _run(driver, "size", env={"QCOMPILE_NUM_THREADS": "3"}).stdout.strip() == "3"
    assert _run(driver, "size", env={"QCOMPILE_NUM_THREADS": "1"}).stdout.strip() == "1"
    default = str(len(os.sched_getaffinity(0)))
    assert _run(driver, "size").stdout.strip() == default
    for bad in ("0", "-2", "abc", "3x", ""):
        assert _run(driver, "size", env={"QCOMPILE_NUM_THREADS": bad}).stdout.strip() == default, bad


# ----------------------------------------------------------------------- features


def _cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    raise AssertionError("no flags line in /proc/cpuinfo")


def _features(driver, *names):
    proc = _run(driver, "features", *names)
    assert proc.returncode == 0, proc.stderr
    count, _, missing = proc.stdout.partition("\n")
    missing = missing.rstrip("\n")
    return int(count), (missing.split(",") if missing else [])


X86_NAMES = ["sse", "sse2", "ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "f16c", "fma",
             "bmi1", "bmi2", "avx2", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
             "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg",
             "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
             "amx_int8", "amx_bf16"]
ARM_NAMES = ["fp", "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2", "asimdhp", "atomics"]


def test_cpu_features_match_proc_cpuinfo(driver):
    machine = platform.machine()
    flags = _cpuinfo_flags()
    if machine == "x86_64":
        assert _features(driver, "sse2") == (0, [])
        names = X86_NAMES
    elif machine in ("aarch64", "arm64"):
        assert _features(driver, "asimd") == (0, [])
        names = ARM_NAMES
    else:
        pytest.fail(f"qc_cpu_missing_features has no table for {machine}")
    count, missing = _features(driver, *names)
    assert missing == [n for n in names if n not in flags]
    assert count == len(missing)


def test_unknown_cpu_feature_is_reported_missing(driver):
    first = "avx512f" if platform.machine() == "x86_64" else "asimddp"
    count, missing = _features(driver, first, "not_a_feature")
    expect = ([] if first in _cpuinfo_flags() else [first]) + ["not_a_feature"]
    assert (count, missing) == (len(expect), expect)
    assert _features(driver) == (0, [])


# ----------------------------------------------------------------------- checksum


GOLDEN = {  # pins the algorithm documented in qc_runtime.h
    b"": 0x9CA066F1A4AB2EEA,
    b"abc": 0x7271C2E03696AE87,
    b"qcompile": 0x87F0FC2C0AB600EB,
    bytes(range(256)): 0x519D8FCB7E2215D9,
}


def test_checksum_numpy_matches_reference_and_golden():
    rng = np.random.default_rng(7)
    for data, value in GOLDEN.items():
        assert runtime.checksum64(data) == value
        assert runtime.checksum64_reference(data) == value
    for n in [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4097]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        ref = runtime.checksum64_reference(data)
        assert runtime.checksum64(data) == ref
        assert runtime.checksum64(memoryview(data)) == ref
        assert runtime.checksum64(bytearray(data)) == ref
        assert runtime.checksum64(np.frombuffer(data, np.uint8)) == ref
    # arrays hash their C-order bytes, whatever the dtype / layout
    a = rng.standard_normal((33, 17)).astype(np.float32)
    assert runtime.checksum64(a) == runtime.checksum64(a.tobytes())
    assert runtime.checksum64(a.T) == runtime.checksum64(a.T.copy().tobytes())
    # any single flipped bit, and swapped words, change the value
    base = bytearray(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    h = runtime.checksum64(base)
    for bit in range(0, 64 * 8, 13):
        flipped = bytearray(base)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert runtime.checksum64(flipped) != h
    swapped = base[8:16] + base[0:8] + base[16:]
    assert runtime.checksum64(swapped) != h
    assert runtime.checksum64(b"\0") != runtime.checksum64(b"\0\0")


def test_checksum_c_matches_numpy(driver, tmp_path):
    rng = np.random.default_rng(3)
    lengths = [0, 1, 7, 8, 31, 32, 33, 1000, 1 << 20, (1 << 20) + 5, (1 << 17) * 8 * 2 + 24]
    files, expect = [], []
    for n in lengths:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        path = tmp_path / f"d{n}.bin"
        path.write_bytes(data)
        files.append(path)
        expect.append(runtime.checksum64(data))
    for data, value in GOLDEN.items():
        path = tmp_path / f"g{len(data)}.bin"
        path.write_bytes(data)
        files.append(path)
        expect.append(value)
    proc = _run(driver, "checksum", *files)
    assert proc.returncode == 0, proc.stderr
    assert [int(v) for v in proc.stdout.split()] == expect


# ---------------------------------------------------------------- compile checks


def test_thread_sanitizer_reports_no_races(tmp_path):
    # Fail (not skip) when TSan is unusable: the race check is part of the suite.
    probe = tmp_path / "probe.c"
    probe.write_text("#include <pthread.h>\nstatic void* f(void* a) { return a; }\n"
                     "int main(void) { pthread_t t; pthread_create(&t, 0, f, 0);"
                     " return pthread_join(t, 0); }\n")
    proc = subprocess.run(["gcc", "-fsanitize=thread", str(probe), "-o", str(tmp_path / "probe"),
                           "-pthread"], capture_output=True, text=True)
    assert proc.returncode == 0, f"gcc -fsanitize=thread cannot link here:\n{proc.stderr}"
    assert _run(tmp_path / "probe").returncode == 0, "TSan runtime does not start"

    exe = _compile(tmp_path / "driver_tsan", extra=["-O1", "-g", "-fsanitize=thread"])
    env = {"TSAN_OPTIONS": "halt_on_error=1 exitcode=66"}
    runs = [("pool", 30), ("concurrent", 1000), ("nested",), ("error",)]
    for spin in (None, "0"):
        for args in runs:
            e = dict(env, **({"QCOMPILE_SPIN_US": spin} if spin else {}))
            proc = _run(exe, *args, env=e, timeout=120)
            assert "ThreadSanitizer" not in proc.stderr, proc.stderr
            _ok(proc)


def test_runtime_compiles_warning_free(tmp_path):
    flags = ["-c", "-O2", "-fPIC", "-Wall", "-Wextra", "-Werror"]
    for cc in ("gcc", "clang"):
        if cc == "clang" and shutil.which("clang") is None:
            continue
        for std in ("-std=c11", "-std=gnu11"):
            _compile(tmp_path / f"rt_{cc}.o", cc=cc, extra=[std, *flags], sources=RUNTIME_C,
                     link=False)


def test_shared_library_exports_only_tvm_hooks(tmp_path):
    so = tmp_path / "librt.so"
    _compile(so, extra=["-O2", "-fPIC", "-shared"], sources=RUNTIME_C)
    out = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert {"TVMFFIErrorSetRaisedFromCStrParts", "__TVMBackendParallelLaunch",
            "__TVMBackendAllocWorkspace", "__TVMBackendFreeWorkspace"} <= exported
    assert not [s for s in exported if s.startswith("qc_")], exported
    deps = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True,
                          check=True).stdout
    needed = {line.split("[")[1].rstrip("]") for line in deps.splitlines() if "(NEEDED)" in line}
    # ld-linux*: glibc's dynamic loader provides __tls_get_addr (thread-locals in a .so)
    needed = {n for n in needed if not n.startswith("ld-linux")}
    assert needed <= {"libc.so.6", "libm.so.6", "libpthread.so.0"}, needed


def test_aarch64_cross_compile(tmp_path):
    cc = "aarch64-linux-gnu-gcc"
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    extra = []
    probe = subprocess.run([cc, "-E", "-x", "c", "-", "-o", os.devnull], input="#include <stdlib.h>\n",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        # The cross compiler is installed without an aarch64 libc-dev.  For this
        # compile-only check borrow the host's glibc headers (the API is the same;
        # gnu/stubs-32.h is what glibc picks when __x86_64__ is undefined).
        host_inc = Path("/usr/include/x86_64-linux-gnu")
        assert host_inc.is_dir(), probe.stderr
        shim = tmp_path / "shim"
        (shim / "gnu").mkdir(parents=True)
        (shim / "gnu" / "stubs-32.h").write_text("")
        extra = [f"-isystem{shim}", f"-isystem{host_inc}"]
    obj = tmp_path / "rt_aarch64.o"
    _compile(obj, cc=cc, extra=[*extra, "-c", "-O2", "-fPIC"], sources=RUNTIME_C, link=False)
    assert obj.read_bytes()[18] == 183  # e_machine == EM_AARCH64
    nm = shutil.which("aarch64-linux-gnu-nm") or "nm"
    syms = subprocess.run([nm, str(obj)], capture_output=True, text=True, check=True).stdout
    assert "getauxval" in syms  # the aarch64 feature-detection branch was compiled
