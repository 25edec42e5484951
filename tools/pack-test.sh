#!/usr/bin/env bash
# Install test of the shipping issue (npm run test:pack; CI runs it):
#   1. pack:prebuilds + npm pack;
#   2. install the tarball into an empty project with NO compiler on PATH (no g++, cc, make): it must load the
#      prebuilt CPU addon and run a forward pass;
#   3. install a copy of the tarball without prebuilds/: npm's install step builds from source, and info() says
#      the binary was built from source.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$root"

# arm64 is covered by tools/arm64-test.sh (npm run test:arm64); extra options: PACK_PREBUILDS_ARGS=--no-cuda
npm run pack:prebuilds -- --no-arm64 ${PACK_PREBUILDS_ARGS:-}
tgz="$work/$(npm pack --silent --pack-destination "$work" | tail -1)"
echo "packed $(basename "$tgz"): $(du -h "$tgz" | cut -f1)"
tar -tzf "$tgz" >"$work/contents.txt"
grep -q 'package/prebuilds/linux-x64/sparse-ffn.node' "$work/contents.txt"
grep -q 'package/dist/lib/index.js' "$work/contents.txt"

# A PATH with node and npm but no compiler or make.
nocc="$work/nocc-bin"
mkdir -p "$nocc"
for t in node npm npx sh bash env cat ls mkdir rm cp mv sed grep dirname basename uname tr head tail sort python3 git tar gzip; do
  p=$(command -v "$t" || true)
  [ -n "$p" ] && ln -sf "$p" "$nocc/$t"
done
for t in g++ gcc cc c++ make; do
  if PATH="$nocc" command -v "$t" >/dev/null 2>&1; then echo "PATH still has $t" >&2; exit 1; fi
done

newapp() {
  mkdir -p "$1"
  printf '{ "name": "app", "version": "1.0.0", "private": true, "type": "module" }\n' >"$1/package.json"
  cp "$root/tools/pack-smoke.mjs" "$1/"
}

echo "== 1. prebuilt, no compiler on PATH"
newapp "$work/app-prebuilt"
(cd "$work/app-prebuilt" && PATH="$nocc" npm install --no-audit --no-fund "$tgz" && PATH="$nocc" node pack-smoke.mjs prebuilt)
test ! -e "$work/app-prebuilt/node_modules/sparse-ffn/build" || { echo "a build/ folder appeared: it compiled" >&2; exit 1; }

echo "== 2. no prebuilds: builds from source"
mkdir "$work/unpacked"
tar -xzf "$tgz" -C "$work/unpacked"
rm -rf "$work/unpacked/package/prebuilds"
(cd "$work/unpacked" && tar -czf "$work/sparse-ffn-noprebuilds.tgz" package)
newapp "$work/app-source"
(cd "$work/app-source" && npm install --no-audit --no-fund --foreground-scripts "$work/sparse-ffn-noprebuilds.tgz" 2>&1 | grep -E "gyp info (ok|spawn make)|sparse-ffn" | head -5; node pack-smoke.mjs source)
test -f "$work/app-source/node_modules/sparse-ffn/build/Release/sparse_ffn.node"

echo "pack test passed"
