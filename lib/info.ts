/** What was loaded and why: backend, binary, CPU features, threads, GPU. Printed by `sparse-ffn info`. */
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { isObject, showValue } from './errors.js';
import { backend, native, packageRoot } from './native/loader.js';
import type { CudaDeviceInfo } from './native/binding.js';

export interface BackendInfo {
  version: string;
  backend: 'cpu' | 'cuda';
  reason: string;
  binaryPath: string;
  /** 'prebuilt' (shipped in prebuilds/) or 'source' (compiled on this machine). */
  binaryOrigin: 'prebuilt' | 'source';
  napiVersion: number;
  node: string;
  cpu: {
    isa: string;
    bestIsa: string;
    features: string[];
    threads: number;
    physicalCores: number;
  };
  gpu?: {
    devices: CudaDeviceInfo[];
    driverVersion?: number;
    runtimeVersion?: number;
    archs?: string;
  };
  attempts: { path: string; error: string }[];
}

/** Describes the loaded backend. */
export function info(): BackendInfo {
  const b = backend();
  const n = b.binding.info();
  const version = JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')).version as string;
  return {
    version,
    backend: b.backend,
    reason: b.reason,
    binaryPath: b.path,
    binaryOrigin: b.origin,
    napiVersion: n.napiVersion,
    node: process.version,
    cpu: {
      isa: n.isa,
      bestIsa: n.bestIsa,
      features: Object.entries(n.cpuFeatures)
        .filter(([, v]) => v)
        .map(([k]) => k),
      threads: n.threads,
      physicalCores: n.physicalCores,
    },
    gpu:
      b.backend === 'cuda'
        ? {
            devices: b.probe.devices ?? [],
            driverVersion: b.probe.driverVersion,
            runtimeVersion: b.probe.runtimeVersion,
            archs: b.probe.archs,
          }
        : undefined,
    attempts: b.attempts,
  };
}

/** Checks that i has the shape formatInfo reads (it is normally what info() returned, possibly via JSON). */
function checkBackendInfo(i: unknown): asserts i is BackendInfo {
  const what = 'formatInfo: i must be a BackendInfo (the object info() returns)';
  if (!isObject(i)) throw new TypeError(`${what}, got ${showValue(i)}`);
  const o = i as Record<string, unknown>;
  const cpu = o.cpu as Record<string, unknown> | undefined;
  if (!isObject(cpu)) throw new TypeError(`${what}: i.cpu must be an object, got ${showValue(cpu)}`);
  if (!Array.isArray(cpu.features)) throw new TypeError(`${what}: i.cpu.features must be an array of strings, got ${showValue(cpu.features)}`);
  if (o.gpu !== undefined) {
    const gpu = o.gpu as Record<string, unknown> | null;
    if (gpu === null || typeof gpu !== 'object' || !Array.isArray(gpu.devices))
      throw new TypeError(`${what}: i.gpu must be undefined or an object with a devices array, got ${showValue(gpu)}`);
  }
}

/** Human-readable form of info() (or of an info() result passed in, e.g. one read back from JSON). */
export function formatInfo(i: BackendInfo = info()): string {
  checkBackendInfo(i);
  const lines = [
    `sparse-ffn ${i.version} (node ${i.node}, N-API ${i.napiVersion})`,
    `backend:  ${i.backend} — ${i.reason}`,
    `binary:   ${i.binaryPath} (${i.binaryOrigin === 'prebuilt' ? 'prebuilt binary' : 'built from source'})`,
    `cpu:      isa ${i.cpu.isa} (best ${i.cpu.bestIsa}), ${i.cpu.threads} threads, ${i.cpu.physicalCores} physical cores`,
    `features: ${i.cpu.features.join(' ')}`,
  ];
  if (i.gpu) {
    for (const d of i.gpu.devices)
      lines.push(`gpu:      ${d.name}, compute ${d.computeCapability}, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB`);
    lines.push(`cuda:     driver ${i.gpu.driverVersion}, runtime ${i.gpu.runtimeVersion}, archs ${i.gpu.archs ?? '?'}`);
  }
  return lines.join('\n');
}

/** Threads used by native CPU kernels (default: physical cores). */
export function setNumThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > 256)
    throw new RangeError(`setNumThreads: n must be an integer in [1, 256], got ${String(n)}`);
  native().setNumThreads(n);
}

export function getNumThreads(): number {
  return native().getNumThreads();
}

/** Forces an instruction set for CPU kernels ('scalar' | 'avx2' | 'avx512'); for tests and benchmarks. */
export function setIsa(isa: 'scalar' | 'avx2' | 'avx512'): void {
  native().setIsa(isa);
}
