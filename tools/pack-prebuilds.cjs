#!/usr/bin/env node
// npm run pack:prebuilds — builds the binaries that ship inside the npm tarball:
//   prebuilds/linux-x64/sparse-ffn.node          CPU addon (prebuildify --napi --strip); node-gyp-build picks it
//   prebuilds/linux-arm64/sparse-ffn.node        CPU addon cross-compiled, when aarch64-linux-gnu-g++ exists
//   prebuilds/linux-x64-cuda13/sparse-ffn-cuda.node  CUDA flavor (from build-cuda/, built first if nvcc exists);
//                                                 a folder name node-gyp-build never matches, so only our loader
//                                                 (after a passing probe()) ever loads it
// and prebuilds/MANIFEST.json with each file's size, sha256 and glibc / libstdc++ floor.
// Options: --no-cuda, --no-arm64.
'use strict';
const { execFileSync, spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const args = new Set(process.argv.slice(2));
const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const run = (cmd, argv, env = {}) => {
  console.log(`$ ${cmd} ${argv.join(' ')}`);
  execFileSync(cmd, argv, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
};
const prebuildify = path.join(root, 'node_modules', '.bin', 'prebuildify');

// The highest GLIBC_x.y / GLIBCXX_x.y.z symbol version a binary needs (its floor).
function floors(file, objdump = 'objdump') {
  const out = has(objdump) ? execFileSync(objdump, ['-T', file]).toString() : '';
  const top = (re) => {
    const vs = [...out.matchAll(re)].map((m) => m[1].split('.').map(Number));
    vs.sort((a, b) => {
      for (let i = 0; i < Math.max(a.length, b.length); i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
      return 0;
    });
    return vs.length ? vs[vs.length - 1].join('.') : null;
  };
  return { glibc: top(/GLIBC_([0-9.]+)/g), glibcxx: top(/GLIBCXX_([0-9.]+)/g) };
}

const manifest = [];
function record(rel, arch, flavor, objdump) {
  const file = path.join(root, rel);
  const buf = fs.readFileSync(file);
  manifest.push({
    file: rel,
    arch,
    flavor,
    bytes: buf.length,
    sha256: crypto.createHash('sha256').update(buf).digest('hex'),
    ...floors(file, objdump),
  });
}

fs.rmSync(path.join(root, 'prebuilds'), { recursive: true, force: true });

// 1. CPU, host arch (x64 here).
run(prebuildify, ['--napi', '--strip']);
record(`prebuilds/linux-${process.arch}/sparse-ffn.node`, process.arch, 'cpu');

// 2. CPU, linux-arm64 through Debian's cross compiler (ISA libraries are x64-only; see binding.gyp).
if (!args.has('--no-arm64') && process.arch === 'x64' && has('aarch64-linux-gnu-g++')) {
  run(prebuildify, ['--napi', '--strip', '--arch', 'arm64'], {
    CC: 'aarch64-linux-gnu-gcc',
    CXX: 'aarch64-linux-gnu-g++',
    LINK: 'aarch64-linux-gnu-g++',
    AR: 'aarch64-linux-gnu-ar',
    PREBUILD_STRIP_BIN: 'aarch64-linux-gnu-strip',
  });
  record('prebuilds/linux-arm64/sparse-ffn.node', 'arm64', 'cpu', 'aarch64-linux-gnu-objdump');
  // Every x86 kernel must be behind #if defined(__x86_64__) in the baseline dispatch code; an unresolved
  // sffn:: symbol would make the arm64 binary fail to load (or die when called).
  const undef = execFileSync('aarch64-linux-gnu-nm', ['-D', '--undefined-only', '-C', 'prebuilds/linux-arm64/sparse-ffn.node'], {
    cwd: root,
  })
    .toString()
    .split('\n')
    .filter((l) => l.includes('sffn::'));
  if (undef.length) throw new Error(`linux-arm64 prebuild has unresolved kernel symbols:\n${undef.join('\n')}`);
  // prebuildify's arm64 run rebuilt build/ for arm64; rebuild the host addon so local tests keep working.
  run('npm', ['run', 'build:native']);
} else if (!args.has('--no-arm64')) {
  console.log('no aarch64-linux-gnu-g++: skipping the linux-arm64 prebuild (apt-get install g++-aarch64-linux-gnu)');
}

// 3. CUDA flavor.
const cudaBuilt = path.join(root, 'build-cuda', 'Release', 'sparse_ffn_cuda.node');
if (!args.has('--no-cuda') && (fs.existsSync(cudaBuilt) || has('nvcc'))) {
  if (!fs.existsSync(cudaBuilt)) run('npm', ['run', 'build:cuda']);
  const rel = `prebuilds/linux-${process.arch}-cuda13/sparse-ffn-cuda.node`;
  fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
  fs.copyFileSync(cudaBuilt, path.join(root, rel));
  if (has('strip')) run('strip', ['--strip-unneeded', rel]);
  record(rel, process.arch, 'cuda');
} else if (!args.has('--no-cuda')) {
  console.log('no nvcc and no build-cuda/: skipping the CUDA flavor prebuild');
}

fs.writeFileSync(path.join(root, 'prebuilds', 'MANIFEST.json'), JSON.stringify(manifest, null, 2) + '\n');
console.log('\nprebuilds:');
for (const m of manifest)
  console.log(`  ${m.file}  ${(m.bytes / 1024).toFixed(0)} KiB  glibc >= ${m.glibc}  libstdc++ GLIBCXX >= ${m.glibcxx}`);
