"""The Metal target, build side: `qcompile build --target metal` writes a folder with everything a
Mac needs (MSL, launchers, the Objective-C++ Metal runtime, executor, weights, headers, build.sh);
the host code parses as Objective-C++ against a Metal API stand-in; build.sh runs every step on
files that exist (with a recording xcrun); attention's scores get a static threadgroup size from
the plan's bound, and a row longer than threadgroup memory is refused. (The MSL's type check and
its numbers on the CPU: tests/test_metal_shim.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest

from qcompile.artifact import metal as metal_artifact
from qcompile.artifact.runtime import RUNTIME_DIR
from qcompile.build import BuildOptions, build, front
from qcompile.targets.presets import get_preset
from qcompile.targets.tvm import metal
from qcompile.zoo import LlamaConfig, make_llama

STANDIN = Path(__file__).resolve().parents[1] / "qcompile" / "testing" / "metal_shim" / "objc"
needs_clang = pytest.mark.skipif(shutil.which("clang++") is None, reason="parsing Objective-C++ needs clang++")
OBJC = ["clang++", "-x", "objective-c++", "-std=c++17", "-fobjc-arc", "-fblocks", "-fobjc-runtime=macosx-14.0",
        "-fsyntax-only", "-Wall", "-Werror", f"-I{STANDIN}"]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metal")
    onnx.save(make_llama(LlamaConfig(), with_kv_cache=True), str(tmp / "llama.onnx"))
    res = build(tmp / "llama.onnx", BuildOptions(target="metal", precision="int4", group_size=32, max_seq_len=64,
                                                 out_dir=tmp / "out"))
    return res, tmp / "out" / "llama_metal"


def test_a_metal_build_writes_what_a_mac_needs(llama_folder):
    res, folder = llama_folder
    assert res.finish == f"sh {folder / 'build.sh'}" and not res.library.exists()
    for name in (*metal_artifact.SOURCES, "llama.h", "llama_exec.c", "llama_tables.h", "llama_config.h",
                 "include/tvm/ffi/c_api.h", "include/dlpack/dlpack.h"):
        assert (folder / name).is_file(), name
    assert (folder / "llama.h").read_text() == res.header.read_text()
    assert "xcode-select --install" in (folder / "README.md").read_text()     # the two commands, on a Mac
    assert "sh llama_metal/build.sh" in (folder / "README.md").read_text()
    manifest = json.loads(res.manifest.read_text())
    assert manifest["target"]["preset"] == "metal"
    kinds = {k["name"]: k["schedule"] for k in manifest["kernels"]}
    assert "qlinear-warp-per-column" in kinds.values() and "attention-rows" in kinds.values()
    device = manifest["metal"]["device_kernels"]
    assert {d["kernel"] for d in device} == set(kinds)
    msl = (folder / "kernels.metal").read_text()
    assert msl.count("#include <metal_stdlib>") == 1
    assert {f"kernel void {d['name']}(" for d in device} <= {line.split("(")[0] + "(" for line in msl.splitlines()
                                                               if line.startswith("kernel void ")}
    # every kernel the launchers dispatch, by index into the table that opens the pipelines
    host = (folder / "kernels_host.mm").read_text()
    table = host[host.index("QC_METAL_KERNELS["):]
    assert [line.strip(' ",') for line in table.splitlines()[1:len(device) + 1]] == [d["name"] for d in device]
    assert subprocess.run(["sh", "-n", str(folder / "build.sh")]).returncode == 0


@needs_clang
def test_the_host_code_parses_as_objective_cxx_against_the_metal_api(llama_folder):
    _, folder = llama_folder
    for source in ("qc_metal.mm", "kernels_host.mm"):
        proc = subprocess.run([*OBJC, f"-I{folder}", f"-I{folder / 'include'}", str(folder / source)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{source}:\n{proc.stderr}"
    proc = subprocess.run(["clang", "-std=gnu11", "-fsyntax-only", "-Wall", "-Werror", "-DQC_METAL", f"-I{folder}",
                           f"-I{folder / 'include'}", str(folder / "llama_exec.c")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@needs_clang
def test_a_wrong_metal_call_is_caught_by_the_parse(tmp_path):
    """What the stand-in is for: a misspelled selector or a wrong argument type fails as in Xcode."""
    good = (RUNTIME_DIR / "qc_metal.mm").read_text()
    for broken, error in [
        (good.replace("dispatchThreadgroups:", "dispatchThreadGroups:"), "dispatchThreadGroups"),
        (good.replace("setBuffer:buffer offset:offset", "setBuffer:buffers[i] offset:offset"),
         "cannot initialize a parameter of type 'id<MTLBuffer>'"),
    ]:
        assert broken != good
        (tmp_path / "qc_metal.mm").write_text(broken)
        shutil.copy(RUNTIME_DIR / "qc_metal.h", tmp_path / "qc_metal.h")
        proc = subprocess.run([*OBJC, str(tmp_path / "qc_metal.mm")], capture_output=True, text=True)
        assert proc.returncode != 0 and error in proc.stderr, proc.stderr


def test_build_sh_runs_each_step_on_files_that_exist(llama_folder, tmp_path):
    """build.sh under a recording xcrun: the metal compiler, metallib, the C, Objective-C++ and
    assembly compiles and the final link, each reading files that exist by then."""
    _, folder = llama_folder
    work = tmp_path / "llama_metal"
    shutil.copytree(folder, work)
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "xcrun.log"
    (fake / "xcrun").write_text(f"""#!/bin/sh
echo "$*" >> {log}
shift 2                                   # -sdk macosx
out=""; prev=""
for a in "$@"; do
  case "$a" in -*|*=*) ;; *) [ "$prev" = "-o" ] || [ "$prev" = "-arch" ] || [ "$prev" = "-install_name" ] || \\
      [ "$prev" = "-framework" ] || [ "$prev" = "-sdk" ] || [ "$prev" = "" -a "$a" = "$1" ] || \\
      [ -e "$a" ] || {{ echo "xcrun: no such input $a" >&2; exit 1; }} ;; esac
  [ "$prev" = "-o" ] && out="$a"
  prev="$a"
done
[ -n "$out" ] && : > "$out"
""")
    (fake / "xcrun").chmod(0o755)
    proc = subprocess.run(["sh", str(work / "build.sh")], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [line.split()[2] for line in log.read_text().splitlines()]
    assert steps == ["metal", "metallib", "clang", "clang", "clang++", "clang++", "clang", "clang", "clang++"]
    assert (tmp_path / "llama.dylib").exists() and "-framework Metal" in log.read_text().splitlines()[-1]
    assert "-mmacosx-version-min=13.0" in log.read_text().splitlines()[-1]
    log.unlink()
    proc = subprocess.run(["sh", str(work / "build.sh")], capture_output=True, text=True,     # the iOS build
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SDK": "iphoneos"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = log.read_text().splitlines()[-1]
    assert last.startswith("-sdk iphoneos clang++") and "-miphoneos-version-min=16.0" in last


def test_attention_scores_get_a_static_threadgroup_array(tmp_path):
    onnx.save(make_llama(LlamaConfig(), with_kv_cache=True), str(tmp_path / "llama.onnx"))
    opts = BuildOptions(target="metal", precision="fp32", max_seq_len=64)
    f = front(tmp_path / "llama.onnx", opts, get_preset("metal"), "m", lambda phase, detail: None)
    module = metal.lower(f.kernels, get_preset("metal"), f.plan.bounds)
    keys = f.plan.bounds["past"] + f.plan.bounds["seq"]
    assert f"threadgroup float dot_shared[{keys}];" in module.source
    # past threadgroup memory (32 KiB, less the reductions' share) the scores stay in device
    # memory under dlight's fallback, and the manifest and the build's log say why
    long = BuildOptions(target="metal", precision="fp32", max_seq_len=4096)
    f = front(tmp_path / "llama.onnx", long, get_preset("metal"), "m", lambda phase, detail: None)
    rules = metal.lower(f.kernels, get_preset("metal"), f.plan.bounds).rules
    attention = [rules[k.name] for k in f.kernels.values() if k.kind == "attention"]
    assert attention == ["dlight.Fallback (attention-rows: ValueError: rows of up to 8192 keys do not fit in shared "
                         "memory (31744 bytes); long rows need a split-K attention (not yet))"]


def test_metal_is_listed_as_build_only():
    preset = get_preset("metal")
    assert preset.status == "build-only" and preset.gpu and preset.shared_suffix == ".dylib"
