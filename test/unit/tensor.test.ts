import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import {
  BackendUnavailableError,
  DisposedError,
  DTypeError,
  DeviceError,
  ShapeError,
  Tensor,
  keep,
  memory,
  tidy,
} from '../../lib/index.js';
import { native, packageRoot } from '../../lib/native/loader.js';
import { hostPoolStats } from '../../lib/tensor.js';
import { guardLeaks } from '../helpers.js';

/** Runs ES-module `code` in a fresh Node process from the package root with extra environment variables. */
function runModule(code: string, env: Record<string, string>) {
  return spawnSync(process.execPath, ['--input-type=module', '-e', code], { cwd: packageRoot(), env: { ...process.env, ...env }, encoding: 'utf8' });
}

/** runModule that must succeed; the JSON the code printed. */
function moduleJson(code: string, env: Record<string, string>) {
  const r = runModule(code, env);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

describe('Tensor', () => {
  guardLeaks();

  it('builds from nested arrays with an inferred shape', () => {
    using t = Tensor.from([
      [1, 2, 3],
      [4, 5, 6],
    ]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('f32');
    expect(t.device).toBe('cpu');
    expect(t.toArray()).toEqual([
      [1, 2, 3],
      [4, 5, 6],
    ]);
  });

  it('adopts a matching typed array without copying', () => {
    const a = new Float32Array([1, 2, 3, 4]);
    using t = Tensor.from(a, { shape: [2, 2] });
    expect(t.data()).toBe(a);
    a[0] = 9;
    expect(t.toArray()).toEqual([
      [9, 2],
      [3, 4],
    ]);
  });

  it('supports i32, i64 and bf16 storage', () => {
    using i = Tensor.from([1, -2, 3], { dtype: 'i32' });
    expect(i.data()).toBeInstanceOf(Int32Array);
    using l = Tensor.from([1, 2 ** 40], { dtype: 'i64' });
    expect(l.toArray()).toEqual([1, 2 ** 40]);
    using b = Tensor.from([1.5, -2, 0.1], { dtype: 'bf16' });
    expect(b.data()).toBeInstanceOf(Uint16Array);
    const back = b.toArray() as number[];
    expect(back[0]).toBe(1.5);
    expect(back[1]).toBe(-2);
    expect(Math.abs(back[2] - 0.1)).toBeLessThan(1e-3);
  });

  it('allocates host arrays of 4 KiB or more on a 64-byte boundary, of 1 MiB or more on a page; smaller ones as plain arrays', () => {
    const b = native();
    for (const dtype of ['f32', 'i32', 'i64', 'bf16'] as const) {
      using big = Tensor.zeros([1024, 3], { dtype });
      const d = big.data();
      expect(d.length).toBe(3072);
      // The view starts where the buffer's address is 64-aligned (the buffer is 64 bytes longer than the data).
      expect(d.byteOffset).toBe(b.alignOffset(d.buffer as ArrayBuffer, 64));
      expect(d.buffer.byteLength).toBe(d.byteLength + 64);
      expect(Array.from(d.slice(0, 4), Number)).toEqual([0, 0, 0, 0]);
      using full = Tensor.full([2048, 2], 3, { dtype: dtype === 'bf16' ? 'f32' : dtype });
      expect(full.data().byteOffset).toBe(b.alignOffset(full.data().buffer as ArrayBuffer, 64));
      using small = Tensor.zeros([8], { dtype });
      expect(small.data().byteOffset).toBe(0);
      // 1 MiB or more (tables): on a page boundary, so power-of-two rows up to 4 KiB never straddle their size.
      using table = Tensor.zeros([1024, dtype === 'i64' ? 128 : dtype === 'bf16' ? 512 : 256], { dtype });
      const t = table.data();
      expect(t.byteLength).toBe(1 << 20);
      expect(t.byteOffset).toBe(b.alignOffset(t.buffer as ArrayBuffer, 4096));
      expect(t.buffer.byteLength).toBe(t.byteLength + 4096);
    }
    expect(b.alignOffset(new ArrayBuffer(8), 1)).toBe(0);
    expect(() => b.alignOffset(new Float32Array(4) as never, 64)).toThrow(/alignOffset: buffer must be an ArrayBuffer/);
    expect(() => b.alignOffset(new ArrayBuffer(8), 48)).toThrow(/alignOffset: align must be a power of two, got 48/);
    expect(() => b.alignOffset(new ArrayBuffer(8), 8192)).toThrow(/align/);
  });

  // Transparent huge pages: the mode the kernel runs in ('always', 'madvise' or 'never'), or null off Linux.
  const thpFile = '/sys/kernel/mm/transparent_hugepage/enabled';
  const thp = existsSync(thpFile) ? (/\[(\w+)\]/.exec(readFileSync(thpFile, 'utf8'))?.[1] ?? null) : null;
  it.skipIf(thp === null || thp === 'never')(
    'host arrays of 32 MiB or more are advised onto huge pages before first touch; SPARSE_FFN_HUGE_PAGES=0 turns it off',
    () => {
      // A fresh process each time (the setting is read once): allocate 64 MiB, write it, report the growth of
      // AnonHugePages (MiB) and whether the array starts where the advice can cover it.
      const code = `
        import { readFileSync } from 'node:fs';
        import { Tensor } from './dist/lib/index.js';
        const huge = () => +/AnonHugePages:\\s+(\\d+)/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))[1] / 1024;
        const before = huge();
        const t = Tensor.zeros([16 << 20]);
        t.data().fill(1);
        console.log(JSON.stringify({ grew: huge() - before }));`;
      // 64 MiB minus at most one partial 2 MiB page at each end.
      expect(moduleJson(code, {}).grew).toBeGreaterThanOrEqual(60);
      const off = moduleJson(code, { SPARSE_FFN_HUGE_PAGES: '0' });
      if (thp === 'madvise') expect(off.grew).toBe(0);
      const bad = runModule(code, { SPARSE_FFN_HUGE_PAGES: 'yes' });
      expect(bad.status).not.toBe(0);
      expect(bad.stderr).toContain("sparse-ffn: SPARSE_FFN_HUGE_PAGES must be 0 or 1, got 'yes'");
    },
  );

  describe('reuse of disposed host buffers', () => {
    const n = 1 << 19; // 2 MiB of f32: page-aligned storage, eligible for reuse
    const pooled = () => hostPoolStats().buffers;

    it('a disposed tensor the library allocated and never handed out lends its buffer to the next allocation, zeroed', () => {
      const a = Tensor.full([n], 7);
      expect(a.toArray() as number[]).toContain(7); // toArray and item read without handing the array out
      const before = pooled();
      a.dispose();
      expect(pooled()).toBe(before + 1);
      using b = Tensor.zeros([n / 2, 2]);
      expect(pooled()).toBe(before);
      expect((b.data() as Float32Array).every((v) => v === 0)).toBe(true);
      // clone() makes a library-owned array too, and an i32 array of the same byte size reuses an f32 one.
      const f = Tensor.full([n], 3);
      using c = f.clone();
      f.dispose();
      expect(pooled()).toBe(before + 1);
      using e = Tensor.zeros([n], { dtype: 'i32' });
      expect(pooled()).toBe(before);
      expect((c.data() as Float32Array).every((v) => v === 3)).toBe(true);
      expect((e.data() as Int32Array).every((v) => v === 0)).toBe(true);
    });

    it('never reuses an array that data() handed out, one a view still holds, or one the caller gave', () => {
      const before = pooled();
      const t = Tensor.zeros([n]);
      const d = t.data() as Float32Array;
      t.dispose();
      d.fill(5);
      using u = Tensor.zeros([n]);
      expect((u.data() as Float32Array)[0]).toBe(0);
      expect(d[0]).toBe(5);
      expect(pooled()).toBe(before);
      const w = Tensor.zeros([n]);
      const v = w.reshape([512, 1024]);
      w.dispose();
      expect(pooled()).toBe(before);
      v.dispose();
      expect(pooled()).toBe(before + 1);
      using x = Tensor.zeros([n]); // takes it back
      const mine = new Float32Array(n);
      Tensor.fromHost(mine, [n]).dispose();
      Tensor.from(mine).dispose();
      expect(pooled()).toBe(before);
    });

    it('keeps at most SPARSE_FFN_HOST_POOL_MB MiB (oldest first); 0 keeps none', () => {
      // A fresh process each time (the limit is read once): dispose three 2 MiB tensors, report what is kept.
      const code = `
        import { Tensor } from './dist/lib/index.js';
        import { hostPoolStats } from './dist/lib/tensor.js';
        const ts = [1, 2, 3].map(() => Tensor.zeros([1 << 19]));
        for (const t of ts) t.dispose();
        console.log(JSON.stringify(hostPoolStats()));`;
      expect(moduleJson(code, {}).buffers).toBe(3);
      const some = moduleJson(code, { SPARSE_FFN_HOST_POOL_MB: '5' });
      expect(some.buffers).toBe(2);
      expect(some.bytes).toBeLessThanOrEqual(5 << 20);
      expect(moduleJson(code, { SPARSE_FFN_HOST_POOL_MB: '0' })).toEqual({ buffers: 0, bytes: 0 });
      const bad = runModule(code, { SPARSE_FFN_HOST_POOL_MB: '-1' });
      expect(bad.status).not.toBe(0);
      expect(bad.stderr).toContain("sparse-ffn: SPARSE_FFN_HOST_POOL_MB must be an integer ≥ 0 (MiB), got '-1'");
    });
  });

  it('reshape is a view over the same storage; -1 infers a dim', () => {
    using t = Tensor.from([1, 2, 3, 4, 5, 6]);
    using v = t.reshape([3, -1]);
    expect(v.shape).toEqual([3, 2]);
    (t.data() as Float32Array)[5] = 60;
    expect(v.toArray()).toEqual([
      [1, 2],
      [3, 4],
      [5, 60],
    ]);
    expect(() => t.reshape([4, -1])).toThrow(ShapeError);
  });

  it('zeros, full, item, clone', () => {
    using z = Tensor.zeros([2, 3], { dtype: 'i32' });
    expect(z.toArray()).toEqual([
      [0, 0, 0],
      [0, 0, 0],
    ]);
    using f = Tensor.full([1], 2.5);
    expect(f.item()).toBe(2.5);
    using c = f.clone();
    (c.data() as Float32Array)[0] = 1;
    expect(f.item()).toBe(2.5);
  });

  it('tidy disposes intermediates and keeps results and keep()s', () => {
    const start = memory().liveTensors;
    let kept: Tensor | undefined;
    const out = tidy(() => {
      Tensor.zeros([4]);
      kept = keep(Tensor.zeros([2]));
      return { a: Tensor.zeros([3]), b: [Tensor.zeros([1])] };
    });
    expect(memory().liveTensors).toBe(start + 3);
    expect(out.a.isDisposed).toBe(false);
    out.a.dispose();
    out.b[0].dispose();
    kept!.dispose();
    expect(() => tidy(() => Promise.resolve() as never)).toThrow(TypeError);
  });

  it('memory() returns to its start after 10,000 small tensors', () => {
    const before = memory();
    for (let i = 0; i < 10_000; i++) {
      tidy(() => {
        const t = Tensor.from([i, i + 1]);
        t.reshape([2, 1]);
      });
    }
    expect(memory()).toEqual(before);
  });

  describe('bad input', () => {
    it('rejects a Float64Array where f32 is expected', () => {
      // @ts-expect-error: a Float64Array is the bad input under test
      expect(() => Tensor.from(new Float64Array(4))).toThrow(DTypeError);
      // @ts-expect-error: as above
      expect(() => Tensor.from(new Float64Array(4), { dtype: 'f32' })).toThrow(/Float32Array.*Float64Array/);
      expect(() => Tensor.from(new Int32Array(4), { dtype: 'f32' })).toThrow(DTypeError);
    });
    it('rejects wrong lengths, negative and fractional dims', () => {
      expect(() => Tensor.from(new Float32Array(5), { shape: [2, 2] })).toThrow(/shape \[2, 2\] needs 4 elements, data has 5/);
      expect(() => Tensor.zeros([2, -1])).toThrow(/shape\[1\] must be a non-negative integer, got -1/);
      expect(() => Tensor.zeros([1.5])).toThrow(ShapeError);
      expect(() =>
        Tensor.from([
          [1, 2],
          [3] as number[],
        ]),
      ).toThrow(/ragged/);
    });
    it('rejects unknown dtypes and devices', () => {
      expect(() => Tensor.zeros([1], { dtype: 'f64' as never })).toThrow(DTypeError);
      expect(() => Tensor.zeros([1], { device: 'tpu' as never })).toThrow(DeviceError);
    });
    it('using a disposed tensor throws DisposedError; dispose is idempotent', () => {
      const t = Tensor.zeros([2]);
      t.dispose();
      t.dispose();
      expect(t.isDisposed).toBe(true);
      expect(() => t.data()).toThrow(DisposedError);
      expect(() => t.reshape([2])).toThrow(DisposedError);
      expect(() => t.to('cpu')).toThrow(DisposedError);
    });
    it('cuda tensors on the CPU flavor give BackendUnavailableError', async () => {
      const { info } = await import('../../lib/index.js');
      if (info().backend === 'cuda') return;
      expect(() => Tensor.zeros([2], { device: 'cuda' })).toThrow(BackendUnavailableError);
    });
  });
});
