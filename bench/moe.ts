/**
 * MoE benchmark: `npm run bench -- moe [--config anchor,small] [--tokens 1,64,512,4096]
 *   [--routing uniform,random,skewed,one] [--min-seconds 0.3]`.
 *
 * Configurations (kernels.md §8): the σ-MoE anchor D=512, G=128, E=32, k=4 for T in {1, 64, 512, 4096}, and
 * D=256, G=64, E=16, k=4 at T=2048. Routing: uniform (perfectly balanced), random (Gaussian logits), skewed
 * (expert popularity ∝ 1/rank, Gumbel-top-k sampling), one (every token picks the same k experts).
 *
 * Each row: the MoE layer (route + experts) forward and forward+backward, next to our dense FFN at equal FLOPs
 * (F = k·G) and at equal parameters (F = E·G), all ReLU, no biases, timed side by side in one run. GFLOP/s count
 * useful work only: 4·T·k·D·G per MoE forward (×3 for forward+backward), 4·T·D·F per dense forward. The selector
 * GEMM (2·T·D·E, about 3% of the MoE FLOPs at the anchor) is not included on either side. Time split of the
 * forward: route+sort / up (gather GEMM + act + gate) / down+combine; of the backward: experts / route.
 */
import { Tensor, ffnDense, ffnDenseBackward, moeExperts, moeExpertsBackward, moeRoute, moeRouteBackward, getNumThreads } from '../lib/index.js';
import { moeCombine, moeExpertDown, moeExpertUp } from '../lib/ops/moe.js';
import { machine, parseArgs, printTable, time, writeResults } from './harness.js';

interface Config {
  name: string;
  D: number;
  G: number;
  E: number;
  k: number;
  tokens: number[];
}

const CONFIGS: Config[] = [
  { name: 'anchor', D: 512, G: 128, E: 32, k: 4, tokens: [1, 64, 512, 4096] },
  { name: 'small', D: 256, G: 64, E: 16, k: 4, tokens: [2048] },
];

type Routing = 'uniform' | 'random' | 'skewed' | 'one';

function rand(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

function filled(shape: number[], seed: number, scale: number): Tensor {
  const t = Tensor.zeros(shape);
  const d = t.data() as Float32Array;
  const r = rand(seed);
  for (let i = 0; i < d.length; i++) d[i] = (2 * r() - 1) * scale;
  return t;
}

/** Logits [T, E] whose top-k gives the requested routing shape. */
function logits(T: number, E: number, k: number, kind: Routing, seed: number): Tensor {
  const z = Tensor.zeros([T, E]);
  const d = z.data() as Float32Array;
  const r = rand(seed);
  for (let t = 0; t < T; t++)
    for (let e = 0; e < E; e++) {
      let v: number;
      if (kind === 'uniform') {
        // Token t prefers experts (t·k + j) mod E: every expert gets exactly T·k/E slots.
        const j = (e - ((t * k) % E) + E) % E;
        v = j < k ? 10 - j : r();
      } else if (kind === 'random') {
        v = 2 * r() - 1;
      } else if (kind === 'skewed') {
        // Gumbel-top-k over log-weights of a Zipf(1) popularity: sampling k experts without replacement.
        v = -Math.log(e + 1) - Math.log(-Math.log(Math.max(r(), 1e-12)));
      } else {
        v = e < k ? 10 - e : r();
      }
      d[t * E + e] = v;
    }
  return z;
}

const ms = (s: number) => s * 1e3;

export async function run(argv: string[]): Promise<void> {
  const args = parseArgs(argv);
  const pick = (key: string) => (typeof args[key] === 'string' ? (args[key] as string).split(',') : undefined);
  const configs = CONFIGS.filter((c) => !pick('config') || pick('config')!.includes(c.name));
  const tokenFilter = pick('tokens')?.map(Number);
  const routings = (pick('routing') ?? ['uniform', 'random', 'skewed', 'one']) as Routing[];
  const minSeconds = Number(args['min-seconds'] ?? 0.3);
  const opts = { warmup: 1, minRuns: 3, maxRuns: 50, minSeconds };
  const m = machine();
  console.log(`moe benchmark: ${m.cpu}, ${m.cores} cores, ${getNumThreads()} threads, ${m.isa}, commit ${m.commit}`);

  const rows: Record<string, string | number>[] = [];
  const splits: Record<string, string | number>[] = [];
  const results: unknown[] = [];
  for (const c of configs) {
    const { D, G, E, k } = c;
    const w1 = filled([E, D, G], 1, 1 / Math.sqrt(D));
    const w2 = filled([E, G, D], 2, 1 / Math.sqrt(E * G));
    const dense = (F: number, seed: number) => ({ w1: filled([D, F], seed, 1 / Math.sqrt(D)), w2: filled([F, D], seed + 1, 1 / Math.sqrt(F)) });
    const eqFlops = dense(k * G, 3);
    const eqParams = dense(E * G, 5);
    for (const T of c.tokens.filter((t) => !tokenFilter || tokenFilter.includes(t))) {
      const x = filled([T, D], 7, 1);
      const dy = filled([T, D], 8, 1);
      const timeDense = (p: { w1: Tensor; w2: Tensor }) => {
        const fwd = time(() => {
          const f = ffnDense(x, p);
          f.y.dispose();
          f.saved.pre.dispose();
          f.saved.h.dispose();
        }, opts);
        const fb = time(() => {
          const f = ffnDense(x, p);
          const g = ffnDenseBackward(dy, x, p, f.saved);
          for (const t of [f.y, f.saved.pre, f.saved.h, g.dx, g.dw1, g.dw2]) t.dispose();
        }, opts);
        return { fwd: fwd.median, fb: fb.median };
      };
      const dF = timeDense(eqFlops);
      const dP = timeDense(eqParams);
      for (const kind of routings) {
        const z = logits(T, E, k, kind, 11);
        const route = () => moeRoute(z, { k, gate: 'sigmoid' });
        const tRoute = time(() => route().dispose(), opts).median;
        const r = route();
        const tUp = time(() => {
          const u = moeExpertUp(x, w1, r, { act: 'relu' });
          u.pre.dispose();
          u.hs.dispose();
        }, opts).median;
        // The same block composed from the public primitives (per-slot [S, D] buffer, then the slot-order k-sum).
        const tPrims = time(() => {
          const u = moeExpertUp(x, w1, r, { act: 'relu' });
          const yr = moeExpertDown(u.hs, w2, r);
          const y = moeCombine(yr, r);
          for (const t of [u.pre, u.hs, yr, y]) t.dispose();
        }, opts).median;
        const tExperts = time(() => {
          const f = moeExperts(x, r, { w1, w2 });
          for (const t of [f.y, f.saved.pre, f.saved.hs]) t.dispose();
        }, opts).median;
        const f = moeExperts(x, r, { w1, w2 });
        const tExpertsBwd = time(() => {
          const g = moeExpertsBackward(dy, x, r, { w1, w2 }, f.saved);
          for (const t of [g.dx, g.dw1, g.dw2, g.dgates]) t.dispose();
        }, opts).median;
        const g = moeExpertsBackward(dy, x, r, { w1, w2 }, f.saved);
        const tRouteBwd = time(() => moeRouteBackward(z, r, g.dgates, { entropy: 1e-3 }).dispose(), opts).median;
        for (const t of [f.y, f.saved.pre, f.saved.hs, g.dx, g.dw1, g.dw2, g.dgates]) t.dispose();
        const fwd = tRoute + tExperts;
        const fb = fwd + tExpertsBwd + tRouteBwd;
        const flop = 4 * T * k * D * G;
        const counts = Array.from(r.counts.data() as Int32Array);
        r.dispose();
        z.dispose();
        const row = {
          config: c.name,
          T,
          routing: kind,
          'max m_e': Math.max(...counts),
          'fwd ms': ms(fwd),
          'fwd GF/s': flop / fwd / 1e9,
          'f+b ms': ms(fb),
          'f+b GF/s': (3 * flop) / fb / 1e9,
          'dense=FLOP f+b ms': ms(dF.fb),
          'dense=FLOP GF/s': (3 * flop) / dF.fb / 1e9,
          'dense=param f+b ms': ms(dP.fb),
          'moe/dense=FLOP fwd': fwd / dF.fwd,
          'moe/dense=FLOP f+b': fb / dF.fb,
          'moe/dense=param f+b': fb / dP.fb,
          'route share': (tRoute + tRouteBwd) / fb,
        };
        rows.push(row);
        splits.push({
          config: c.name,
          T,
          routing: kind,
          'route ms': ms(tRoute),
          'up ms': ms(tUp),
          'down+combine ms': ms(tExperts - tUp),
          'fused block ms': ms(tExperts),
          'primitives ms': ms(tPrims),
          'experts bwd ms': ms(tExpertsBwd),
          'route bwd ms': ms(tRouteBwd),
        });
        results.push({
          ...c, tokens: undefined, T, routing: kind, counts,
          seconds: { route: tRoute, up: tUp, experts: tExperts, primitives: tPrims, expertsBackward: tExpertsBwd, routeBackward: tRouteBwd, forward: fwd, forwardBackward: fb },
          dense: { equalFlops: { F: k * G, ...dF }, equalParams: { F: E * G, ...dP } },
        });
      }
      x.dispose();
      dy.dispose();
    }
    for (const t of [w1, w2, eqFlops.w1, eqFlops.w2, eqParams.w1, eqParams.w2]) t.dispose();
  }
  printTable(rows, 'MoE layer (route + experts) vs dense FFN, ReLU, f32 (times are medians)');
  printTable(splits, 'Time split (forward: route / up / down+combine; backward: experts / route)');
  writeResults('moe', results);
}
