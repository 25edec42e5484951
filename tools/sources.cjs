// Lists native sources for binding.gyp and CMakeLists.txt, so that adding a kernel file never edits the build.
//   node tools/sources.cjs base    -> core, ref, cpu (baseline ISA), napi .cpp files
//   node tools/sources.cjs avx2    -> native/kernels/cpu/*.avx2.cpp     (built with -mavx2 -mfma)
//   node tools/sources.cjs avx512  -> native/kernels/cpu/*.avx512.cpp   (built with -mavx512{f,bw,dq,vl,bf16})
//   node tools/sources.cjs cuda    -> native/kernels/cuda/*.cu
// ISA-specific code lives only in the .avx2/.avx512 files; the rest is compiled for baseline x86-64 so the
// binary never dies with SIGILL on an older CPU (runtime dispatch in native/core/cpu_features.cpp).
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const list = (dir, pred) =>
  fs.existsSync(path.join(root, dir))
    ? fs.readdirSync(path.join(root, dir)).filter(pred).sort().map((f) => `${dir}/${f}`)
    : [];
const isIsa = (f) => /\.(avx2|avx512)\.cpp$/.test(f);

const kinds = {
  base: () => [
    ...list('native/core', (f) => f.endsWith('.cpp')),
    ...list('native/kernels/ref', (f) => f.endsWith('.cpp')),
    ...list('native/kernels/cpu', (f) => f.endsWith('.cpp') && !isIsa(f)),
    ...list('native/napi', (f) => f.endsWith('.cpp')),
  ],
  avx2: () => list('native/kernels/cpu', (f) => f.endsWith('.avx2.cpp')),
  avx512: () => list('native/kernels/cpu', (f) => f.endsWith('.avx512.cpp')),
  cuda: () => list('native/kernels/cuda', (f) => f.endsWith('.cu')),
};
const kind = process.argv[2];
if (!kinds[kind]) {
  console.error(`usage: node tools/sources.cjs ${Object.keys(kinds).join('|')}`);
  process.exit(2);
}
// CMake wants ';'-separated lists, gyp wants one per line.
const files = kinds[kind]();
process.stdout.write(process.argv[3] === '--cmake' ? files.join(';') : files.join('\n') + '\n');
