#!/usr/bin/env bash
# Prepares .gpu-carry/ (git-ignored) for tools/gpu-check.sh on a GPU machine that has CUDA, cmake and python3 but
# no node, no node_modules and no network:
#
#   bash tools/gpu-pack.sh          (after npm ci; builds dist/ and, with nvcc, a CUDA flavor for GPU_PACK_ARCH)
#
#   .gpu-carry/node.xz              this machine's node binary (x86-64 Linux, glibc)
#   .gpu-carry/modules.tar.xz       node_modules (without @stdlib, prebuildify), dist/ and the CPU addon
#                                   build/Release/sparse_ffn.node (gpu-check.sh recompiles dist/ there with tsc)
#   .gpu-carry/sparse_ffn_cuda.node the CUDA flavor for GPU_PACK_ARCH (default 90-real: H100/H200), used by
#                                   gpu-check.sh only if building there fails; GPU_PACK_ARCH= (empty) leaves it out
#
# About 45 MB in all. Then, on the GPU machine, from the repository root with .gpu-carry next to it:
#   bash tools/gpu-check.sh "$OUT"
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ -d node_modules/vitest ] || { echo "gpu-pack: run npm ci first" >&2; exit 1; }
npm run -s build:ts
rm -rf .gpu-carry
mkdir -p .gpu-carry
NODE=$(readlink -f "$(command -v node)")
echo "gpu-pack: node $("$NODE" --version) from $NODE"
xz -T0 -6 -c "$NODE" >.gpu-carry/node.xz
extra=()
[ -f build/Release/sparse_ffn.node ] && extra+=(build/Release/sparse_ffn.node)
tar -cJf .gpu-carry/modules.tar.xz \
  --exclude=node_modules/@stdlib --exclude=node_modules/prebuildify --exclude=node_modules/.cache \
  --exclude=node_modules/.vite --exclude=node_modules/.vitest node_modules dist "${extra[@]}"
ARCH=${GPU_PACK_ARCH-90-real}
if [ -n "$ARCH" ] && command -v nvcc >/dev/null; then
  echo "gpu-pack: building the CUDA flavor for $ARCH into build-cuda-pack/"
  node node_modules/cmake-js/bin/cmake-js compile --out build-cuda-pack "--CDCMAKE_CUDA_ARCHITECTURES=$ARCH" >/dev/null
  cp build-cuda-pack/Release/sparse_ffn_cuda.node .gpu-carry/sparse_ffn_cuda.node
fi
du -ah .gpu-carry
echo "gpu-pack: done. On the GPU machine: carry .gpu-carry, then run: bash tools/gpu-check.sh \"\$OUT\""
