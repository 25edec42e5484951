/**
 * CUDA flavor device memory: probe, DeviceBuffer round trips for every dtype, fills, dispose idempotence,
 * the allocatedBytes/liveBuffers counters, Tensor <-> device copies with memory().deviceBytes, and bad input
 * (disposed buffers, wrong kinds and lengths, host/device mix-ups, look-alike objects).
 * Without a GPU the device suites are skipped with the probe's reason; the fallback test below still checks
 * that a built CUDA flavor loads here, fails its probe cleanly and leaves the CPU backend in charge.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { DeviceError, DisposedError, DTypeError, ShapeError, Tensor, info, memory, tidy } from '../../lib/index.js';
import type { HostArray, NativeBinding, NativeDeviceBuffer, NativeDType } from '../../lib/native/binding.js';
import { native, packageRoot } from '../../lib/native/loader.js';
import { bf16ToF32, f32ToBf16 } from '../../lib/tensor.js';
import { guardLeaks, randn } from '../helpers.js';
import { announce, deviceMemory, gpuStatus, toDevice } from './cuda-env.js';

const st = gpuStatus();
announce('test/gpu/device', st);
const cudaNode = path.join(packageRoot(), 'build-cuda', 'Release', 'sparse_ffn_cuda.node');

describe('CUDA flavor without a usable GPU', () => {
  it.skipIf(st.gpu || !existsSync(cudaNode))('loads, fails its probe with the CUDA reason, and the loader falls back to the CPU', () => {
    const b = createRequire(import.meta.url)(cudaNode) as NativeBinding;
    const p = b.probe();
    expect(p.ok).toBe(false);
    expect(p.flavor).toBe('cuda');
    expect(p.error).toMatch(/^cuda\w+: .+ \(cuda\w+\)$/);
    expect(p.runtimeVersion).toBeGreaterThanOrEqual(12000);
    expect(p.archs).toMatch(/\d{2}/);
    expect(b.info().flavor).toBe('cuda');
    // Device functions report the CUDA error instead of crashing; argument errors still come first.
    expect(() => b.deviceAlloc!(4, 'f32')).toThrow(/deviceAlloc: CUDA error: cudaMalloc\(16 bytes\)/);
    expect(() => b.deviceAlloc!(4, 'f64' as never)).toThrow(/deviceAlloc: dtype must be one of f32, i32, i64, bf16, u8, got 'f64'/);
    expect(b.deviceMemory!()).toEqual({ allocatedBytes: 0, liveBuffers: 0 });
    if ((process.env.SPARSE_FFN_BACKEND ?? 'auto').toLowerCase() === 'auto') {
      const i = info();
      expect(i.backend).toBe('cpu');
      expect(i.reason).toContain('probe failed');
      expect(i.attempts.some((a) => a.path === cudaNode && a.error.startsWith('probe failed: '))).toBe(true);
    }
  });
});

describe.skipIf(!st.gpu)('CUDA device memory', () => {
  guardLeaks();
  let before = { allocatedBytes: 0, liveBuffers: 0 };
  beforeEach(() => {
    before = deviceMemory();
  });
  afterEach(() => {
    expect(deviceMemory(), 'deviceMemory() after the test').toEqual(before);
  });

  it('probe reports devices, versions and archs', () => {
    const p = native().probe();
    expect(p.ok).toBe(true);
    expect(p.flavor).toBe('cuda');
    expect(p.deviceCount).toBeGreaterThanOrEqual(1);
    expect(p.driverVersion).toBeGreaterThanOrEqual(p.runtimeVersion!);
    expect(p.devices![0].computeCapability).toMatch(/^\d+\.\d+$/);
    expect(p.devices![0].totalMemory).toBeGreaterThan(0);
    expect(info().backend).toBe('cuda');
    expect(info().gpu?.devices.length).toBeGreaterThanOrEqual(1);
  });

  it('round-trips every dtype, including empty buffers', () => {
    const n = 1037;
    const cases: [NativeDType, HostArray][] = [
      ['f32', randn(n, 1)],
      ['i32', Int32Array.from({ length: n }, (_, i) => i * 7919 - 400000)],
      ['i64', BigInt64Array.from({ length: n }, (_, i) => BigInt(i) * 123456789012n - 5n)],
      ['bf16', Uint16Array.from({ length: n }, (_, i) => (i * 40503) & 0xffff)],
      ['u8', Uint8Array.from({ length: n }, (_, i) => (i * 31) & 0xff)],
      ['f32', new Float32Array(0)],
    ];
    for (const [dtype, host] of cases) {
      const d = toDevice(host, dtype);
      expect(d.dtype).toBe(dtype);
      expect(d.count).toBe(host.length);
      expect(d.byteLength).toBe(host.byteLength);
      const back = new (host.constructor as new (n: number) => typeof host)(host.length);
      native().copyToHost!(back, d);
      expect(Array.from(back as ArrayLike<number | bigint>)).toEqual(Array.from(host as ArrayLike<number | bigint>));
      const d2 = native().deviceAlloc!(host.length, dtype);
      native().copyDeviceToDevice!(d2, d);
      const back2 = new (host.constructor as new (n: number) => typeof host)(host.length);
      native().copyToHost!(back2, d2);
      expect(Array.from(back2 as ArrayLike<number | bigint>)).toEqual(Array.from(host as ArrayLike<number | bigint>));
      d.dispose();
      d2.dispose();
    }
  });

  it('deviceFill writes every dtype (bf16 rounded to nearest even)', () => {
    const n = 3001;
    const f = native().deviceAlloc!(n, 'f32');
    native().deviceFill!(f, -2.5);
    const hf = new Float32Array(n);
    native().copyToHost!(hf, f);
    expect(hf.every((v) => v === -2.5)).toBe(true);
    const b = native().deviceAlloc!(n, 'bf16');
    native().deviceFill!(b, 1 / 3);
    const hb = new Uint16Array(n);
    native().copyToHost!(hb, b);
    expect(hb.every((v) => v === f32ToBf16(1 / 3))).toBe(true);
    expect(bf16ToF32(hb[0])).toBeCloseTo(1 / 3, 2);
    const i = native().deviceAlloc!(n, 'i64');
    native().deviceFill!(i, -7);
    const hi = new BigInt64Array(n);
    native().copyToHost!(hi, i);
    expect(hi.every((v) => v === -7n)).toBe(true);
    const j = native().deviceAlloc!(n, 'i32');
    expect(() => native().deviceFill!(j, 2 ** 31)).toThrow(/deviceFill: value must be in \[-2147483648, 2147483647\], got 2147483648/);
    expect(() => native().deviceFill!(j, 0.5)).toThrow(/deviceFill: value must be an integer/);
    for (const x of [f, b, i, j]) x.dispose();
  });

  it('dispose is idempotent and the counters follow allocations', () => {
    const d = native().deviceAlloc!(1000, 'f32');
    expect(deviceMemory()).toEqual({ allocatedBytes: before.allocatedBytes + 4000, liveBuffers: before.liveBuffers + 1 });
    expect(d.disposed).toBe(false);
    d.dispose();
    expect(d.disposed).toBe(true);
    d.dispose();
    expect(deviceMemory()).toEqual(before);
    expect(d.byteLength).toBe(4000);
  });

  it('rejects disposed buffers, wrong kinds and lengths, and host/device mix-ups', () => {
    const d = native().deviceAlloc!(8, 'f32');
    expect(() => native().copyToDevice!(d, new Float64Array(8) as never)).toThrow(DTypeError);
    expect(() => native().copyToDevice!(d, new Float32Array(7))).toThrow(ShapeError);
    expect(() => native().copyToDevice!(d, new Float32Array(7))).toThrow(/copyToDevice: src must have 8 elements, got 7/);
    expect(() => native().copyToDevice!(new Float32Array(8) as never, new Float32Array(8))).toThrow(DeviceError);
    const i = native().deviceAlloc!(8, 'i32');
    expect(() => native().copyDeviceToDevice!(d, i)).toThrow(/copyDeviceToDevice: src must be f32 like dst, got i32/);
    expect(() => native().copyDeviceToDevice!(d, new Float32Array(8) as never)).toThrow(DeviceError);
    // A look-alike object is not a DeviceBuffer (type tags), and the class cannot be constructed from JS.
    const fake = { byteLength: 32, dtype: 'f32', count: 8, disposed: false, dispose() {} };
    expect(() => native().copyToHost!(new Float32Array(8), fake as NativeDeviceBuffer)).toThrow(TypeError);
    const Ctor = (d as unknown as { constructor: new () => unknown }).constructor;
    expect(() => new Ctor()).toThrow(/cannot be constructed directly/);
    i.dispose();
    d.dispose();
    expect(() => native().copyToHost!(new Float32Array(8), d)).toThrow(DisposedError);
    expect(() => native().copyToHost!(new Float32Array(8), d)).toThrow(/copyToHost: src is a disposed device buffer/);
    expect(() => native().deviceFill!(d, 1)).toThrow(DisposedError);
    expect(() => native().deviceAlloc!(-1, 'f32')).toThrow(RangeError);
  });

  it('Tensor.to("cuda") and back, with memory().deviceBytes accounting and tidy()', () => {
    const m0 = memory();
    const x = Tensor.from(randn(6 * 7, 3), { shape: [6, 7] });
    const d = x.to('cuda');
    expect(d.device).toBe('cuda');
    expect(memory().deviceBytes).toBe(m0.deviceBytes + 6 * 7 * 4);
    expect(Array.from(d.data() as Float32Array)).toEqual(Array.from(x.data() as Float32Array));
    const z = Tensor.zeros([3, 5], { device: 'cuda', dtype: 'bf16' });
    expect(Array.from(z.data() as Uint16Array)).toEqual(new Array(15).fill(0));
    const kept = tidy(() => {
      const a = Tensor.full([4], 2, { device: 'cuda' });
      const b = a.clone();
      return b;
    });
    expect(kept.toArray()).toEqual([2, 2, 2, 2]);
    for (const t of [x, d, z, kept]) t.dispose();
    d.dispose();
    expect(memory()).toEqual(m0);
    expect(() => d.data()).toThrow(DisposedError);
  });
});
