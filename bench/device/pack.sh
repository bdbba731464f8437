#!/usr/bin/env bash
# Build what a device call carries into .device/ (ignored by git): the release binaries
# (stripped, xz-compressed; run-checks.sh unpacks them) and the default model cut to its first
# 10 layers (the whole GGUF is larger than what a call carries). Run on the build machine,
# then `run` with carry [".device"] and `bench/device/run-checks.sh WHAT`.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.device' .gitignore || { echo "/.device is not in .gitignore" >&2; exit 1; }
cargo build --release -p kiln-server --bin kiln
cargo build --release -p kiln-models --bin kiln-check-attention --bin kiln-check-model --bin kiln-check-kernels --bin kiln-check-arch --bin kiln-check-tp
cargo build --release -p kiln-runtime --bin kiln-check-sampler --bin kiln-check-int4
mkdir -p .device
for b in kiln kiln-check-attention kiln-check-model kiln-check-kernels kiln-check-sampler kiln-check-arch kiln-check-tp kiln-check-int4; do
  strip -o ".device/$b" "target/release/$b"
  xz -f -T0 -6 ".device/$b"
done
model="$(target/release/kiln fetch 2>/dev/null | tail -n 1)"
[ -e .device/smollm2-10l.gguf ] || target/release/kiln-check-model truncate "$model" .device/smollm2-10l.gguf 10
du -ch .device/* | tail -n 1
