#!/usr/bin/env bash
# The one test command (README, .ci/run). Fetches what the tests need, then runs them all.
#  - NVRTC from the PyPI wheel nvidia-cuda-nvrtc==13.0.88 (no GPU needed to compile kernels),
#    unpacked under the kiln cache dir and put on LD_LIBRARY_PATH for cudarc's dynamic loading;
#  - the default model (SmolLM2-135M-Instruct GGUF), fetched by kiln itself on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}"
NVRTC_DIR="$CACHE/nvrtc"
NVRTC_LIB="$NVRTC_DIR/nvidia/cu13/lib"
if [ ! -e "$NVRTC_LIB/libnvrtc.so.13" ]; then
  echo "== fetching NVRTC (nvidia-cuda-nvrtc==13.0.88) into $NVRTC_DIR"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps nvidia-cuda-nvrtc==13.0.88 -d "$tmp"
  mkdir -p "$NVRTC_DIR"
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in z.namelist() if n.startswith("nvidia/cu13/lib/")]' "$tmp"/nvidia_cuda_nvrtc-*.whl "$NVRTC_DIR"
  rm -rf "$tmp"
fi
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export INSTA_UPDATE=no

echo "== fetching the default model (cached after the first run)"
cargo run --quiet -p kiln-server -- fetch

echo "== cargo test"
cargo test --workspace --no-fail-fast "$@"
