/**
 * Attention benchmark: `npm run bench -- attention [--shapes train,compare] [--rounds N]`.
 *
 * Causal multi-head self-attention with rotary positions (lib/ops/nn.ts `attention`, kernels/cpu/attention.cpp),
 * forward and forward+backward, at the shapes the training benchmark uses: B·S = 1024 tokens with S in
 * {128, 512, 1024}, D = 512, H = 8 (dh = 64), and the compare preset D = 128, H = 4, S = 128 (B = 8).
 *
 * GFLOP/s count useful causal work only: the two products QKᵀ and PV over the S(S+1)/2 visible (query, key) pairs,
 * 2·2·B·H·dh·S(S+1)/2 flops per forward; forward+backward counts 2 more products in the forward recompute of P
 * plus 4 in the backward (QKᵀ, dO·Vᵀ, Pᵀ·dO, dS·K, dSᵀ·Q → 5 products), i.e. 3.5× the forward (the FlashAttention
 * count). Softmax, exp and rope are not counted. Every (shape, pass) runs once per round in turn, so load changes
 * hit all rows alike; the table reports medians.
 */
import { Tensor, attention, attentionBackward, getNumThreads } from '../lib/index.js';
import { collectGarbage, machine, median, parseArgs, printTable, writeResults } from './harness.js';

interface Shape {
  name: string;
  B: number;
  S: number;
  D: number;
  H: number;
}

const SHAPES: Shape[] = [
  { name: 'train', B: 8, S: 128, D: 512, H: 8 },
  { name: 'train', B: 2, S: 512, D: 512, H: 8 },
  { name: 'train', B: 1, S: 1024, D: 512, H: 8 },
  { name: 'compare', B: 8, S: 128, D: 128, H: 4 },
];

function filled(shape: number[], seed: number, scale: number): Tensor {
  const t = Tensor.zeros(shape);
  const d = t.data() as Float32Array;
  let s = seed >>> 0 || 1;
  for (let i = 0; i < d.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    d[i] = ((s >>> 0) / 4294967296 - 0.5) * 2 * scale;
  }
  return t;
}

function disposeAll(x: unknown): void {
  if (x instanceof Tensor) {
    if (!x.isDisposed) x.dispose();
  } else if (x && typeof x === 'object') for (const v of Object.values(x)) disposeAll(v);
}

export async function run(args: string[]): Promise<void> {
  const opts = parseArgs(args);
  const want = typeof opts.shapes === 'string' ? opts.shapes.split(',') : ['train', 'compare'];
  const rounds = typeof opts.rounds === 'string' ? Number(opts.rounds) : 7;
  const shapes = SHAPES.filter((s) => want.includes(s.name));
  const m = machine();
  console.log(`attention: ${m.cpu}, ${m.threads} threads, ${m.isa}, commit ${m.commit}; ${rounds} rounds, medians`);

  const inputs = shapes.map((s, i) => ({
    qkv: filled([s.B * s.S, 3 * s.D], 11 + i, 1),
    dout: filled([s.B * s.S, s.D], 21 + i, 1),
  }));
  const fwd = (k: number): void => {
    const s = shapes[k];
    const r = attention(inputs[k].qkv, { B: s.B, S: s.S, H: s.H });
    disposeAll(r);
  };
  const fwdBwd = (k: number): void => {
    const s = shapes[k];
    const dims = { B: s.B, S: s.S, H: s.H };
    const r = attention(inputs[k].qkv, dims);
    const d = attentionBackward(inputs[k].dout, inputs[k].qkv, dims, r.saved);
    d.dispose();
    disposeAll(r);
  };
  // Warm-up (scratch arenas and packing buffers grow to size once).
  shapes.forEach((_, k) => {
    fwd(k);
    fwdBwd(k);
  });
  const tF: number[][] = shapes.map(() => []);
  const tFB: number[][] = shapes.map(() => []);
  for (let r = 0; r < rounds; r++)
    for (let k = 0; k < shapes.length; k++) {
      collectGarbage();
      let t0 = performance.now();
      fwd(k);
      tF[k].push(performance.now() - t0);
      collectGarbage();
      t0 = performance.now();
      fwdBwd(k);
      tFB[k].push(performance.now() - t0);
    }

  const rows = shapes.map((s, k) => {
    const dh = s.D / s.H;
    const fwdFlops = 4 * s.B * s.H * dh * ((s.S * (s.S + 1)) / 2);
    const f = median(tF[k]);
    const fb = median(tFB[k]);
    return {
      shape: s.name,
      B: s.B,
      S: s.S,
      D: s.D,
      H: s.H,
      'fwd ms': f,
      'fwd GFLOP/s': fwdFlops / (f * 1e6),
      'fwd+bwd ms': fb,
      'fwd+bwd GFLOP/s': (3.5 * fwdFlops) / (fb * 1e6),
    };
  });
  printTable(rows, `causal attention (rotary), ${getNumThreads()} threads`);
  writeResults('attention', { rounds, rows });
  inputs.forEach(disposeAll);
}
