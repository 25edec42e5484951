/**
 * Shared by the CUDA benchmark suites (gemm-cuda, moe-cuda, pkm-cuda): whether the CUDA flavor is in use (and
 * if not, why), the device's name, wall-clock timing that is correct for asynchronous GPU work, and host fills
 * for large device tensors.
 *
 * Device ops return as soon as their kernels are queued (native/kernels/cuda: launches on the default stream,
 * no synchronisation except the copies back to the host). A timed call is therefore bracketed by
 * deviceSynchronize(): before starting the clock (so earlier work is not charged to it) and before stopping it
 * (so all of its work is). The times include the host side of each call (argument checks, launches, the
 * stream-ordered allocations of its outputs), as a training loop sees them.
 */
import { Tensor } from '../lib/index.js';
import { backend, native } from '../lib/native/loader.js';
import { collectGarbage, median, timeInterleaved as interleaved } from './harness.js';

/** Why the CUDA suites cannot run here, or undefined when the CUDA flavor is loaded with a device. */
export function cudaUnavailable(): string | undefined {
  const b = backend();
  if (b.backend !== 'cuda') return `the CUDA flavor is not in use (${b.reason})`;
  if (!native().deviceSynchronize) return 'the loaded binary has no deviceSynchronize (rebuild the CUDA flavor)';
  return undefined;
}

/** "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" from the probe. */
export function gpuName(): string {
  const d = backend().probe.devices?.[0];
  if (!d) return 'unknown GPU';
  const sms = d.multiprocessors ? `, ${d.multiprocessors} SMs` : '';
  return `${d.name} (sm_${d.computeCapability.replace('.', '')}${sms}, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB)`;
}

/** Waits until every queued device operation has finished (cudaDeviceSynchronize); throws a queued fault. */
export function sync(): void {
  native().deviceSynchronize!();
}

/** Seconds of one call of fn, synchronised on both ends (see the file comment). */
export function timeOnce(fn: () => void): number {
  collectGarbage();
  sync();
  const t0 = process.hrtime.bigint();
  fn();
  sync();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * Seconds until fn returns, its work queued but not necessarily done (synchronised before each call; median of
 * `reps` calls). A call that waits for the device inside (a copy back to the host, a cudaFree) returns only when its
 * work is done, so its queue time approaches its total time; a call that never waits returns after its launches.
 */
export function queueTime(fn: () => void, reps = 3): number {
  const s: number[] = [];
  for (let i = 0; i < reps; i++) {
    collectGarbage();
    sync();
    const t0 = process.hrtime.bigint();
    fn();
    s.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  sync();
  return median(s);
}

/** timeInterleaved (harness.ts) with every call synchronised on both ends (timeOnce). */
export function timeInterleaved(fns: Record<string, () => void>, rounds: number): Record<string, number> {
  return interleaved(fns, rounds, timeOnce);
}

/**
 * A cuda f32 tensor of `shape` holding uniform values in [-scale, scale): a block of 2^20 + 7 pseudo-random values
 * repeated (filling billions of elements one by one in JS would take longer than the benchmark; the period is
 * prime to every row width used here, so rows differ). The host copy is released after the upload.
 */
export function deviceUniform(shape: number[], seed: number, scale: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const period = Math.min(n, (1 << 20) + 7);
  const block = new Float32Array(period);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < period; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    block[i] = ((s >>> 0) / 4294967296 * 2 - 1) * scale;
  }
  const host = new Float32Array(n);
  for (let i = 0; i < n; i += period) host.set(i + period <= n ? block : block.subarray(0, n - i), i);
  return Tensor.from(host, { shape, device: 'cuda' });
}

/** Device memory in use by this process's buffers (the flavor's counter), in GiB. */
export function deviceGiB(): number {
  return (native().deviceMemory?.().allocatedBytes ?? 0) / 2 ** 30;
}
