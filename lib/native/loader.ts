/**
 * Loads the native addon. Order:
 *   1. SPARSE_FFN_BINARY=<path>: exactly that file.
 *   2. Unless SPARSE_FFN_BACKEND=cpu: the CUDA flavor (local build-cuda/ build, then the bundled
 *      prebuilds/linux-x64-cuda13/), used only when its native probe() passes (a device, a driver new
 *      enough for the runtime it was built with).
 *   3. The CPU build via node-gyp-build (build/Release, then prebuilds/linux-x64/).
 * Anything that fails is recorded; info() reports what was chosen and why, and if nothing loads one
 * BackendUnavailableError lists every candidate with its error and the remedies.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  BackendUnavailableError,
  DeviceError,
  DisposedError,
  DTypeError,
  ShapeError,
  type LoadAttempt,
} from '../errors.js';
import type { NativeBinding, ProbeResult } from './binding.js';

const require = createRequire(import.meta.url);

export type BackendName = 'cpu' | 'cuda';

export interface LoadedBackend {
  binding: NativeBinding;
  backend: BackendName;
  path: string;
  reason: string;
  /** 'prebuilt' for a binary shipped in prebuilds/, 'source' for one compiled on this machine. */
  origin: 'prebuilt' | 'source';
  attempts: LoadAttempt[];
  probe: ProbeResult;
}

const originOf = (file: string): 'prebuilt' | 'source' => (/[\\/]prebuilds[\\/]/.test(file) ? 'prebuilt' : 'source');

let cachedRoot: string | undefined;

/** The package directory (works from lib/ under vitest and from dist/lib/ when compiled). */
export function packageRoot(): string {
  if (cachedRoot) return cachedRoot;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if (JSON.parse(readFileSync(pj, 'utf8')).name === 'sparse-ffn') return (cachedRoot = dir);
      } catch {
        // not ours; keep walking
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new BackendUnavailableError('sparse-ffn: cannot find the package root (package.json)');
    dir = up;
  }
}

export const CUDA_FLAVOR = 'cuda13';

function cudaCandidates(root: string): string[] {
  return [
    path.join(root, 'build-cuda', 'Release', 'sparse_ffn_cuda.node'),
    path.join(root, 'prebuilds', `linux-${process.arch}-${CUDA_FLAVOR}`, 'sparse-ffn-cuda.node'),
  ];
}

const REMEDIES = [
  'Rebuild the CPU addon: `npm rebuild sparse-ffn` (needs python3, make and g++).',
  'If your package manager skipped install scripts, approve them (`npm install-scripts approve sparse-ffn`, or pnpm `onlyBuiltDependencies`) and reinstall.',
  'Install build tools: `apt-get install python3 make g++` (Debian/Ubuntu).',
  'For the GPU: `npm run build:cuda` inside the package (needs nvcc and cmake), and an NVIDIA driver.',
  'Set SPARSE_FFN_BACKEND=cpu to skip the CUDA flavor, or SPARSE_FFN_BINARY=<path to .node> to load one file.',
];

function errorText(e: unknown): string {
  return e instanceof Error ? e.message.split('\n')[0] : String(e);
}

function tryRequire(file: string, attempts: LoadAttempt[]): NativeBinding | undefined {
  try {
    return require(file) as NativeBinding;
  } catch (e) {
    attempts.push({ path: file, error: errorText(e) });
    return undefined;
  }
}

function register(binding: NativeBinding): NativeBinding {
  binding.setErrorClasses({
    TypeError,
    RangeError,
    ShapeError,
    DTypeError,
    DeviceError,
    DisposedError,
    BackendUnavailableError,
  });
  return binding;
}

function describeProbe(p: ProbeResult): string {
  const dev = p.devices?.[0];
  const ver = (v?: number) => (v ? `${Math.floor(v / 1000)}.${(v % 1000) / 10}` : '?');
  return dev
    ? `${dev.name} (sm_${dev.computeCapability.replace('.', '')}), driver CUDA ${ver(p.driverVersion)}, runtime ${ver(p.runtimeVersion)}`
    : (p.error ?? 'no device');
}

export function loadBackend(): LoadedBackend {
  const want = (process.env.SPARSE_FFN_BACKEND ?? 'auto').toLowerCase();
  if (!['auto', 'cpu', 'cuda'].includes(want))
    throw new BackendUnavailableError(`sparse-ffn: SPARSE_FFN_BACKEND must be auto, cpu or cuda, got '${want}'`);
  const root = packageRoot();
  const attempts: LoadAttempt[] = [];

  const explicit = process.env.SPARSE_FFN_BINARY;
  if (explicit) {
    const b = tryRequire(path.resolve(explicit), attempts);
    if (b) {
      const probe = b.probe();
      if (probe.ok)
        return {
          binding: register(b),
          backend: probe.flavor,
          path: path.resolve(explicit),
          reason: `SPARSE_FFN_BINARY=${explicit}`,
          origin: originOf(explicit),
          attempts,
          probe,
        };
      attempts.push({ path: explicit, error: `probe failed: ${probe.error ?? 'unknown'}` });
    }
    throw unavailable(`could not load SPARSE_FFN_BINARY=${explicit}`, attempts);
  }

  if (want !== 'cpu') {
    for (const file of cudaCandidates(root)) {
      if (!existsSync(file)) {
        attempts.push({ path: file, error: 'not built' });
        continue;
      }
      const b = tryRequire(file, attempts);
      if (!b) continue;
      let probe: ProbeResult;
      try {
        probe = b.probe();
      } catch (e) {
        attempts.push({ path: file, error: `probe threw: ${errorText(e)}` });
        continue;
      }
      if (probe.ok)
        return {
          binding: register(b),
          backend: 'cuda',
          path: file,
          reason: `CUDA flavor probe passed: ${describeProbe(probe)}`,
          origin: originOf(file),
          attempts,
          probe,
        };
      attempts.push({ path: file, error: `probe failed: ${probe.error ?? 'unknown'}` });
    }
    if (want === 'cuda') throw unavailable('SPARSE_FFN_BACKEND=cuda but no CUDA flavor could be used', attempts);
  }

  let cpuPath = path.join(root, 'build', 'Release', 'sparse_ffn.node');
  try {
    const nodeGypBuild = require('node-gyp-build') as { resolve(dir: string): string };
    cpuPath = nodeGypBuild.resolve(root);
  } catch (e) {
    attempts.push({ path: `${root}/{build/Release,prebuilds/linux-${process.arch}}`, error: errorText(e) });
    throw unavailable('no CPU build found', attempts);
  }
  const b = tryRequire(cpuPath, attempts);
  if (!b) throw unavailable('the CPU build failed to load', attempts);
  const why =
    want === 'cpu'
      ? 'SPARSE_FFN_BACKEND=cpu'
      : `no usable CUDA flavor (${attempts.map((a) => `${path.relative(root, a.path)}: ${a.error}`).join('; ')})`;
  return {
    binding: register(b),
    backend: 'cpu',
    path: cpuPath,
    reason: why,
    origin: originOf(cpuPath),
    attempts,
    probe: b.probe(),
  };
}

function unavailable(what: string, attempts: LoadAttempt[]): BackendUnavailableError {
  const lines = [`sparse-ffn: ${what}.`, 'Tried:'];
  for (const a of attempts) lines.push(`  - ${a.path}: ${a.error}`);
  lines.push('Remedies:');
  for (const r of REMEDIES) lines.push(`  - ${r}`);
  return new BackendUnavailableError(lines.join('\n'), attempts);
}

let loaded: LoadedBackend | undefined;

/** The loaded backend (loads on first use). */
export function backend(): LoadedBackend {
  return (loaded ??= loadBackend());
}

/** The native binding (loads on first use). */
export function native(): NativeBinding {
  return backend().binding;
}

/** The native binding, or null where none loads: for helpers with a plain-JS path (the ops report the load error). */
export function nativeOrNull(): NativeBinding | null {
  try {
    return native();
  } catch {
    return null;
  }
}
