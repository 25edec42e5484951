/**
 * MoE benchmark: `npm run bench -- moe [--config anchor,small] [--tokens 1,64,512,4096]
 *   [--routing uniform,random,skewed,one] [--rounds N]`; `--device cuda` runs bench/moe-cuda.ts instead.
 *
 * Configurations (kernels.md §8): the σ-MoE anchor D=512, G=128, E=32, k=4 for T in {1, 64, 512, 4096}, and
 * D=256, G=64, E=16, k=4 at T=2048. Routing: uniform (perfectly balanced), random (Gaussian logits), skewed
 * (expert popularity ∝ 1/rank, Gumbel-top-k sampling), one (every token picks the same k experts).
 *
 * Each row: the MoE layer (route + experts) forward and forward+backward, next to our dense FFN at equal FLOPs
 * (F = k·G) and at equal parameters (F = E·G), all ReLU, no biases, timed side by side in one run. GFLOP/s count
 * useful work only: 4·T·k·D·G per MoE forward (×3 for forward+backward), 4·T·D·F per dense forward. The selector
 * GEMM (2·T·D·E, about 3% of the MoE FLOPs at the anchor) is not included on either side. Time split of the
 * forward: route+sort / up (gather GEMM + act + gate) / down+combine; of the backward: experts / route. All
 * functions of one (config, T) run once per round in turn (so load changes hit MoE and dense alike); medians.
 */
import { Tensor, ffnDense, ffnDenseBackward, moeExperts, moeExpertsBackward, moeRoute, moeRouteBackward, getNumThreads } from '../lib/index.js';
import { moeCombine, moeExpertDown, moeExpertUp } from '../lib/ops/moe.js';
import { machine, parseArgs, printTable, timeInterleaved, writeResults } from './harness.js';

/**
 * One σ-MoE layer step as a training loop runs it, on the tensors given (any device): `route`; `fwd`, route and
 * experts forward; `fb`, forward then the experts' and the router's backward. Results are disposed. Shared by the
 * CPU and CUDA MoE benchmarks.
 */
export function moeLayerStep(x: Tensor, z: Tensor, dy: Tensor, w: { w1: Tensor; w2: Tensor }, k: number) {
  const route = () => moeRoute(z, { k, gate: 'sigmoid' });
  return {
    route,
    fwd: () => {
      const r = route();
      const o = moeExperts(x, r, w);
      for (const t of [o.y, o.saved.pre, o.saved.hs]) t.dispose();
      r.dispose();
    },
    fb: () => {
      const r = route();
      const o = moeExperts(x, r, w);
      const g = moeExpertsBackward(dy, x, r, w, o.saved);
      const dz = moeRouteBackward(z, r, g.dgates, { entropy: 1e-3 });
      for (const t of [o.y, o.saved.pre, o.saved.hs, g.dx, g.dw1, g.dw2, g.dgates, dz]) t.dispose();
      r.dispose();
    },
  };
}

/** The dense FFN's forward (`fwd`) and forward + backward (`fb`) with weights `p`; results disposed. */
export function denseFfnStep(x: Tensor, dy: Tensor, p: { w1: Tensor; w2: Tensor }) {
  return {
    fwd: () => {
      const f = ffnDense(x, p);
      for (const t of [f.y, f.saved.pre, f.saved.h]) t.dispose();
    },
    fb: () => {
      const f = ffnDense(x, p);
      const g = ffnDenseBackward(dy, x, p, f.saved);
      for (const t of [f.y, f.saved.pre, f.saved.h, g.dx, g.dw1, g.dw2]) t.dispose();
    },
  };
}

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
  // `--device cuda`: the σ-MoE and coarse points on the GPU (bench/moe-cuda.ts).
  if (args.device === 'cuda') return (await import('./moe-cuda.js')).run(argv);
  const pick = (key: string) => (typeof args[key] === 'string' ? (args[key] as string).split(',') : undefined);
  const configs = CONFIGS.filter((c) => !pick('config') || pick('config')!.includes(c.name));
  const tokenFilter = pick('tokens')?.map(Number);
  const routings = (pick('routing') ?? ['uniform', 'random', 'skewed', 'one']) as Routing[];
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
      // Every measured function runs once per round, all of them in turn, so a change of machine load hits
      // the MoE and the dense rows alike; medians over the rounds.
      const fns: Record<string, () => void> = {};
      const dense = (name: string, p: { w1: Tensor; w2: Tensor }) => {
        const d = denseFfnStep(x, dy, p);
        fns[`${name}.fwd`] = d.fwd;
        fns[`${name}.fb`] = d.fb;
      };
      dense('dF', eqFlops);
      dense('dP', eqParams);
      const perRouting = routings.map((kind) => {
        const z = logits(T, E, k, kind, 11);
        const step = moeLayerStep(x, z, dy, { w1, w2 }, k);
        const route = step.route;
        const r = route();
        const f = moeExperts(x, r, { w1, w2 });
        const g = moeExpertsBackward(dy, x, r, { w1, w2 }, f.saved);
        fns[`${kind}.route`] = () => route().dispose();
        fns[`${kind}.up`] = () => {
          const u = moeExpertUp(x, w1, r, { act: 'relu' });
          for (const t of [u.pre, u.hs]) t.dispose();
        };
        fns[`${kind}.experts`] = () => {
          const o = moeExperts(x, r, { w1, w2 });
          for (const t of [o.y, o.saved.pre, o.saved.hs]) t.dispose();
        };
        // The same block composed from the public primitives (per-slot [S, D] buffer, then the slot-order k-sum).
        fns[`${kind}.prims`] = () => {
          const u = moeExpertUp(x, w1, r, { act: 'relu' });
          const yr = moeExpertDown(u.hs, w2, r);
          const y = moeCombine(yr, r);
          for (const t of [u.pre, u.hs, yr, y]) t.dispose();
        };
        fns[`${kind}.expertsBwd`] = () => {
          const o = moeExpertsBackward(dy, x, r, { w1, w2 }, f.saved);
          for (const t of [o.dx, o.dw1, o.dw2, o.dgates]) t.dispose();
        };
        fns[`${kind}.routeBwd`] = () => moeRouteBackward(z, r, g.dgates, { entropy: 1e-3 }).dispose();
        // One whole layer step, as a training loop runs it.
        fns[`${kind}.fwd`] = step.fwd;
        fns[`${kind}.fb`] = step.fb;
        const counts = Array.from(r.counts.data() as Int32Array);
        const release = () => {
          for (const t of [f.y, f.saved.pre, f.saved.hs, g.dx, g.dw1, g.dw2, g.dgates, z]) t.dispose();
          r.dispose();
        };
        return { kind, counts, release };
      });
      const rounds = Number(args.rounds ?? (T >= 2048 ? 5 : T >= 256 ? 9 : 21));
      // Every call after a garbage collection (harness.ts collectGarbage), so that one call's freeing is not
      // charged to the next.
      const med = timeInterleaved(fns, rounds);
      const t = (name: string) => med[name];
      const flop = 4 * T * k * D * G;
      for (const { kind, counts, release } of perRouting) {
        const fwd = t(`${kind}.fwd`);
        const fb = t(`${kind}.fb`);
        rows.push({
          config: c.name,
          T,
          routing: kind,
          'max m_e': Math.max(...counts),
          'fwd ms': ms(fwd),
          'fwd GF/s': flop / fwd / 1e9,
          'f+b ms': ms(fb),
          'f+b GF/s': (3 * flop) / fb / 1e9,
          'dense=FLOP f+b ms': ms(t('dF.fb')),
          'dense=FLOP GF/s': (3 * flop) / t('dF.fb') / 1e9,
          'dense=param f+b ms': ms(t('dP.fb')),
          'moe/dense=FLOP fwd': fwd / t('dF.fwd'),
          'moe/dense=FLOP f+b': fb / t('dF.fb'),
          'moe/dense=param f+b': fb / t('dP.fb'),
          'route share': (t(`${kind}.route`) + t(`${kind}.routeBwd`)) / fb,
        });
        splits.push({
          config: c.name,
          T,
          routing: kind,
          'route ms': ms(t(`${kind}.route`)),
          'up ms': ms(t(`${kind}.up`)),
          'down+combine ms': ms(t(`${kind}.experts`) - t(`${kind}.up`)),
          'fused block ms': ms(t(`${kind}.experts`)),
          'primitives ms': ms(t(`${kind}.prims`)),
          'experts bwd ms': ms(t(`${kind}.expertsBwd`)),
          'route bwd ms': ms(t(`${kind}.routeBwd`)),
        });
        const seconds: Record<string, number> = {};
        for (const name of Object.keys(med)) if (name.startsWith(`${kind}.`)) seconds[name.slice(kind.length + 1)] = t(name);
        results.push({
          config: c.name, D, G, E, k, T, routing: kind, counts, rounds, seconds,
          dense: {
            equalFlops: { F: k * G, fwd: t('dF.fwd'), fb: t('dF.fb') },
            equalParams: { F: E * G, fwd: t('dP.fwd'), fb: t('dP.fb') },
          },
        });
        release();
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
