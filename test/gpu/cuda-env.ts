/**
 * Shared by test/gpu/*: whether the CUDA flavor is loaded (a GPU, a new-enough driver and a build-cuda/
 * binary), and if not, why, so each suite can skip with a message instead of failing.
 */
import { backend } from '../../lib/native/loader.js';
import type { NativeDeviceBuffer, HostArray, NativeDType } from '../../lib/native/binding.js';
import { native } from '../../lib/native/loader.js';

export interface GpuStatus {
  gpu: boolean;
  why: string;
}

export function gpuStatus(): GpuStatus {
  const b = backend();
  if (b.backend === 'cuda') return { gpu: true, why: '' };
  const tried = b.attempts.filter((a) => /cuda/.test(a.path));
  const failed = tried.find((a) => a.error !== 'not built');
  const why = failed
    ? failed.error
    : process.env.SPARSE_FFN_BACKEND?.toLowerCase() === 'cpu'
      ? 'SPARSE_FFN_BACKEND=cpu'
      : 'the CUDA flavor is not built (npm run build:cuda)';
  return { gpu: false, why: `no CUDA device: ${why}` };
}

/** Prints why a GPU suite is skipped (vitest shows skipped tests but not the reason). */
export function announce(suite: string, s: GpuStatus): void {
  if (!s.gpu) console.log(`[${suite}] skipped: ${s.why}`);
}

/** A device buffer holding a copy of `host`. */
export function toDevice(host: HostArray, dtype: NativeDType): NativeDeviceBuffer {
  const b = native().deviceAlloc!(host.length, dtype);
  native().copyToDevice!(b, host);
  return b;
}

/** Device memory counters (allocatedBytes, liveBuffers) from the CUDA flavor. */
export function deviceMemory(): { allocatedBytes: number; liveBuffers: number } {
  return native().deviceMemory!();
}
