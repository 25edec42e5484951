/**
 * PKM and PEER on the GPU: `npm run bench -- pkm --device cuda [--tokens 4096] [--only pkm|peer] [--rounds 5]`
 * (or the suite `pkm-cuda`).
 *
 * The CPU suite's configurations (bench/pkm.ts), every tensor on the device:
 * - PKM (Lample): Dk = 256, H = 4, k = 32, N = 512², value width D = 256, per-head sub-keys, softmax.
 * - PEER (He): D = 256, H = 8, k = 16, N = 1024², query width Dk = 256, sub-keys shared by heads, softmax, GELU.
 *
 * Per T: the retrieval (pkmTopk), the gather (embeddingBag / peerExperts) and their backwards, and the optimizer
 * (sparseAdamwStep on the row-sparse table gradients, adamwStep on the sub-keys, lr = 0 so the tables do not drift),
 * with tokens/s of the forward and of the whole step, and GB/s of the row traffic of the gather kernels (the CPU
 * suite's byte counts: the forward reads J = H·k rows of each table per token; the backward reads them again and
 * writes one gradient row per distinct row touched) next to the device's copy bandwidth (a device-to-device copy
 * of 1 GiB, counting bytes read and written). Times are wall clock with cudaDeviceSynchronize before and after each
 * call (bench/cuda.ts), medians of --rounds interleaved rounds.
 *
 * Prints a table and writes bench/results/pkm-cuda.json with the GPU's name. Where the CUDA flavor is not in use
 * it says why and exits.
 */
import {
  Tensor,
  adamwStep,
  embeddingBag,
  embeddingBagBackward,
  peerExperts,
  peerExpertsBackward,
  pkmTopk,
  pkmTopkBackward,
  sparseAdamwStep,
  type SparseRows,
} from '../lib/index.js';
import { cudaUnavailable, deviceGiB, deviceUniform, gpuName, sync, timeInterleaved, timeOnce } from './cuda.js';
import { machine, parseArgs, printTable, writeResults } from './harness.js';

const OPT = { lr: 0, weightDecay: 0 };

const disposeAll = (...ts: Tensor[]) => {
  for (const t of ts) t.dispose();
};
const disposeSparse = (...s: SparseRows[]) => {
  for (const x of s) disposeAll(x.rows, x.values);
};

/** Distinct rows a device gradient touched (its row list is padded with −1). Read after the timing. */
function touched(s: SparseRows): number {
  let u = 0;
  for (const r of s.rows.data() as Int32Array) if (r >= 0) u++;
  return u;
}

/** Device-to-device copy bandwidth, GB/s (bytes read + written), best of 5 copies of 1 GiB. */
function copyBandwidth(): number {
  const a = Tensor.zeros([2 ** 28], { device: 'cuda' });
  let best = Infinity;
  for (let i = 0; i < 6; i++) {
    let b: Tensor | undefined;
    const t = timeOnce(() => {
      b = a.clone();
    });
    b!.dispose();
    if (i > 0) best = Math.min(best, t);
  }
  a.dispose();
  return (2 * 2 ** 30) / best / 1e9;
}

interface Layer {
  name: 'PKM' | 'PEER';
  H: number;
  k: number;
  n: number;
  Dk: number;
  D: number;
}

const LAYERS: Layer[] = [
  { name: 'PKM', H: 4, k: 32, n: 512, Dk: 256, D: 256 },
  { name: 'PEER', H: 8, k: 16, n: 1024, Dk: 256, D: 256 },
];

function benchLayer(L: Layer, T: number, rounds: number, copyGBs: number, rows: Record<string, string | number>[], json: unknown[]) {
  const { H, k, n, Dk, D } = L;
  const N = n * n;
  const J = H * k;
  const peer = L.name === 'PEER';
  const t0 = Date.now();
  // Tables and their optimizer state; PEER has two tables (U, V) and sub-keys shared by the heads.
  const U = peer ? deviceUniform([N, D], 3, 1 / Math.sqrt(D)) : undefined;
  const V = deviceUniform([N, D], peer ? 4 : 1, 1 / Math.sqrt(D));
  const keys = deviceUniform([peer ? 1 : H, 2, n, Dk / 2], peer ? 5 : 2, 1 / Math.sqrt(Dk / 2));
  const zeros = (shape: number[], dtype: 'f32' | 'i32' = 'f32') => Tensor.zeros(shape, { device: 'cuda', dtype });
  const mV = zeros([N, D]);
  const vV = zeros([N, D]);
  const sV = zeros([N], 'i32');
  const mU = peer ? zeros([N, D]) : undefined;
  const vU = peer ? zeros([N, D]) : undefined;
  const sU = peer ? zeros([N], 'i32') : undefined;
  const mK = zeros([...keys.shape]);
  const vK = zeros([...keys.shape]);
  const q = deviceUniform([T, H, Dk], 10 + T, 1);
  const x = deviceUniform([T, D], 40 + T, 1);
  const dOut = deviceUniform([T, D], 20 + T, 1);
  sync();
  console.log(`\n[${L.name}] T=${T}: tables on the device in ${((Date.now() - t0) / 1e3).toFixed(1)} s, ${deviceGiB().toFixed(2)} GiB`);

  // One forward and backward kept for the pieces that need their inputs.
  const sel = pkmTopk(q, keys, k);
  const f = peer ? peerExperts(x, U!, V, sel.indices, sel.weights, { act: 'gelu' }) : undefined;
  const bPeer = peer ? peerExpertsBackward(dOut, x, U!, V, sel.indices, sel.weights, f!.h, { act: 'gelu' }) : undefined;
  const bBag = peer ? undefined : embeddingBagBackward(dOut, V, sel.indices, sel.weights);
  const dSel = peer ? bPeer!.dGates : bBag!.dWeights;
  const gk = pkmTopkBackward(dSel, q, keys, sel);
  let step = 0;
  const fns: Record<string, () => void> = {
    retr: () => {
      const s = pkmTopk(q, keys, k);
      disposeAll(s.indices, s.scores, s.weights);
    },
    gather: peer
      ? () => {
          const o = peerExperts(x, U!, V, sel.indices, sel.weights, { act: 'gelu' });
          disposeAll(o.out, o.h);
        }
      : () => embeddingBag(V, sel.indices, sel.weights).dispose(),
    gatherBwd: peer
      ? () => {
          const b = peerExpertsBackward(dOut, x, U!, V, sel.indices, sel.weights, f!.h, { act: 'gelu' });
          disposeAll(b.dx, b.dGates);
          disposeSparse(b.dU, b.dV);
        }
      : () => {
          const b = embeddingBagBackward(dOut, V, sel.indices, sel.weights);
          b.dWeights.dispose();
          disposeSparse(b.dV);
        },
    retrBwd: () => {
      const g = pkmTopkBackward(dSel, q, keys, sel);
      disposeAll(g.dq, g.dkeys);
    },
    opt: () => {
      step++;
      if (peer) sparseAdamwStep(U!, mU!, vU!, sU!, bPeer!.dU, OPT);
      sparseAdamwStep(V, mV, vV, sV, peer ? bPeer!.dV : bBag!.dV, OPT);
      adamwStep(keys, gk.dkeys, mK, vK, step, OPT);
    },
  };
  const s = timeInterleaved(fns, rounds);
  const rowsU = touched(peer ? bPeer!.dU : bBag!.dV);
  const tables = peer ? 2 : 1;
  // The CPU suite's byte counts (bench/pkm.ts).
  const fwdBytes = tables * T * J * D * 4 + (peer ? 2 : 1) * T * D * 4;
  const bwdBytes = tables * T * J * D * 4 + (peer ? 3 : 1) * T * D * 4 + tables * rowsU * D * 4;
  const fwd = s.retr + s.gather;
  const train = fwd + s.gatherBwd + s.retrBwd + s.opt;
  const ms = (sec: number) => sec * 1e3;
  const r = {
    layer: L.name,
    T,
    'fwd tok/s': Math.round(T / fwd),
    'train tok/s': Math.round(T / train),
    'retr ms': ms(s.retr),
    'gather ms': ms(s.gather),
    'gather GB/s': fwdBytes / s.gather / 1e9,
    'fwd ×copy': s.gather / (fwdBytes / (copyGBs * 1e9)),
    'bwd gather ms': ms(s.gatherBwd),
    'bwd GB/s': bwdBytes / s.gatherBwd / 1e9,
    'bwd ×copy': s.gatherBwd / (bwdBytes / (copyGBs * 1e9)),
    'bwd retr ms': ms(s.retrBwd),
    'opt ms': ms(s.opt),
    'rows U': rowsU,
  };
  rows.push(r);
  json.push({ ...r, H, k, N, Dk, D, J, rounds, fwdBytes, bwdBytes, copyGBs, seconds: s, deviceGiB: deviceGiB() });
  disposeAll(sel.indices, sel.scores, sel.weights, gk.dq, gk.dkeys, q, x, dOut, V, keys, mV, vV, sV, mK, vK);
  if (peer) {
    disposeAll(f!.out, f!.h, bPeer!.dx, bPeer!.dGates, U!, mU!, vU!, sU!);
    disposeSparse(bPeer!.dU, bPeer!.dV);
  } else {
    bBag!.dWeights.dispose();
    disposeSparse(bBag!.dV);
  }
  sync();
}

export async function run(argv: string[]): Promise<void> {
  const why = cudaUnavailable();
  if (why) {
    console.log(`pkm-cuda: skipped, ${why}`);
    return;
  }
  const args = parseArgs(argv);
  const tokens = typeof args.tokens === 'string' ? args.tokens.split(',').map(Number) : [4096];
  const only = typeof args.only === 'string' ? args.only.toUpperCase() : undefined;
  const rounds = Math.max(1, Number(args.rounds ?? 5));
  const gpu = gpuName();
  const m = machine();
  console.log(`pkm-cuda: ${gpu}; host ${m.cpu}; commit ${m.commit}; ${rounds} rounds`);
  const copyGBs = copyBandwidth();
  console.log(`device-to-device copy: ${copyGBs.toFixed(0)} GB/s (read + write, 1 GiB)`);
  const rows: Record<string, string | number>[] = [];
  const json: unknown[] = [];
  for (const L of LAYERS.filter((l) => !only || l.name === only))
    for (const T of tokens) benchLayer(L, T, rounds, copyGBs, rows, json);
  printTable(rows, `PKM (Dk=256, H=4, k=32, N=512², D=256) and PEER (D=256, Dk=256, H=8, k=16, N=1024²) on ${gpu}; ms are medians`);
  console.log('×copy = gather time / (bytes that must move / device-to-device copy bandwidth); 1 is the floor');
  writeResults('pkm', { gpu, rounds, copyGBs, tokens, results: json }, 'cuda');
}
