/**
 * Layer initialisation draws (lib/nn/init.ts, lib/data/random.ts): Rng.skip, and normal() filled natively in
 * parallel for large tables, which must draw exactly what the JS generator draws one value at a time (a model
 * stays a function of its seed, whatever the table sizes).
 */
import { describe, expect, it } from 'vitest';

import { PEER, Rng } from '../../lib/index.js';
import { normal } from '../../lib/nn/init.js';
import { guardLeaks } from '../helpers.js';

/** n draws of rng.normal() · std in JS, rounded to f32 like a tensor's storage. */
function jsNormal(n: number, std: number, rng: Rng): Float32Array {
  const d = new Float32Array(n);
  for (let i = 0; i < n; i++) d[i] = rng.normal() * std;
  return d;
}

describe('initialisation draws', () => {
  guardLeaks();

  it('Rng.skip(n) leaves the generator where n draws would, for any n (the state wraps mod 2^32)', () => {
    for (const n of [0, 1, 2, 7, 1000]) {
      const a = new Rng(11);
      const b = new Rng(11);
      for (let i = 0; i < n; i++) a.next();
      b.skip(n);
      expect(b.state).toBe(a.state);
      expect(b.next()).toBe(a.next());
    }
    // 2^32 draws bring the state back to where it was.
    const r = new Rng(3);
    const s0 = r.state;
    r.skip(2 ** 32);
    expect(r.state).toBe(s0);
    const big = new Rng(3);
    big.skip(2 ** 33 + 5);
    r.skip(5);
    expect(big.state).toBe(r.state);
    expect(() => new Rng(1).skip(-1)).toThrow('Rng.skip: draws must be an integer ≥ 0, got -1');
    expect(() => new Rng(1).skip(1.5)).toThrow('Rng.skip: draws must be an integer ≥ 0, got 1.5');
  });

  it('normal() of a large table equals the JS draws bit for bit, and leaves the generator where they would', () => {
    for (const [n, std, seed] of [[(1 << 16) + 3, 0.02, 1], [1 << 18, 1 / 1024, 42], [(1 << 16) - 1, 1, 5]] as const) {
      const a = new Rng(seed);
      const b = new Rng(seed);
      const t = normal([n], std, a);
      const want = jsNormal(n, std, b);
      const got = t.data() as Float32Array;
      let first = -1;
      for (let i = 0; i < n && first < 0; i++) if (got[i] !== want[i]) first = i;
      expect(first, `first differing value of ${n} (std ${std})`).toBe(-1);
      expect(a.state).toBe(b.state);
      expect(a.next()).toBe(b.next());
      t.dispose();
    }
  });

  it('a PEER layer is still a function of its seed: its large tables hold the JS generator draws', () => {
    // 256² = 65536 experts of width 4: the tables take the native path.
    const m = new PEER(4, { kind: 'peer', heads: 2, subKeys: 256, k: 4 }, { seed: 9 });
    const params = new Map(m.namedParameters());
    // The layer draws query, keys, down, up in that order from one generator (lib/nn/pkm.ts).
    const r = new Rng(9);
    const skip = (n: number, trunc: boolean) => {
      for (let i = 0; i < n; i++) if (trunc) r.truncNormal(); else r.normal();
    };
    skip(params.get('query')!.data.size, true);
    skip(params.get('keys')!.data.size, false);
    const N = 256 * 256;
    const down = jsNormal(N * 4, 1 / Math.sqrt(4), r);
    const up = jsNormal(N * 4, 1 / Math.sqrt(N), r);
    expect(Array.from(params.get('down')!.data.data() as Float32Array).every((v, i) => v === down[i])).toBe(true);
    expect(Array.from(params.get('up')!.data.data() as Float32Array).every((v, i) => v === up[i])).toBe(true);
    m.dispose();
  });
});
