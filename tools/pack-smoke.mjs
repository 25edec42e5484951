// Run inside a project that installed the sparse-ffn tarball: prints info() and runs a forward pass.
//   node pack-smoke.mjs prebuilt|source
import * as sffn from 'sparse-ffn';

const want = process.argv[2];
const i = sffn.info();
console.log(sffn.formatInfo(i));
const fromPrebuild = /[/\\]prebuilds[/\\]/.test(i.binaryPath);
if (want === 'prebuilt' && !fromPrebuild) throw new Error(`expected the prebuilt binary, loaded ${i.binaryPath}`);
if (want === 'source' && fromPrebuild) throw new Error(`expected a source build, loaded ${i.binaryPath}`);

// A forward pass through the public API, checked against plain JS.
const x = sffn.Tensor.from([
  [1, 2, 3],
  [4, 5, 6],
]);
const w = sffn.Tensor.from([
  [1, 0],
  [0, 1],
  [1, 1],
]);
const y = sffn.matmul(x, w).toArray();
const expected = [
  [4, 5],
  [10, 11],
];
if (JSON.stringify(y) !== JSON.stringify(expected)) throw new Error(`forward pass: got ${JSON.stringify(y)}`);
console.log(`forward pass ok (${want}): ${JSON.stringify(y)}`);
