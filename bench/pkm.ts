/**
 * PKM / PEER benchmark: `npm run bench -- pkm [--tokens 1,512,4096] [--only pkm|peer|opt|layer] [--rounds 7] [--threads n] [--no-huge]`;
 * `--device cuda` runs bench/pkm-cuda.ts instead.
 *
 * Tables use transparent huge pages (adviseHugePages, and the library's own advice for arrays of 32 MiB or more)
 * unless --no-huge (which also sets SPARSE_FFN_HUGE_PAGES=0).
 *
 * - PKM (Lample): Dk = 256, H = 4, k = 32, N = 512², value width D = 256, per-head sub-keys, softmax.
 * - PEER (He): D = 256, H = 8, k = 16, N = 1024², query width Dk = 256, sub-keys shared by heads, softmax, GELU.
 *
 * For T in {1, 512, 4096}: tokens/s of the forward and of a full training step (forward, backward, optimizer), the
 * time split retrieval / gather / backward / optimizer, and GB/s of the gather kernels against this machine's
 * measured copy bandwidth. The floor of a bandwidth-bound kernel is the bytes it must move divided by that
 * bandwidth: forward reads the J = H·k selected rows of each table per token; backward reads them again and
 * writes one gradient row per distinct row touched. Peak memory is the process's max RSS.
 *
 * `layer`: the PEER layer as users train it (lib/nn PEER + AdamW, T = 4096), in a process of its own so that its
 * peak RSS is the layer's alone.
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import process from 'node:process';

import {
  AdamW,
  F,
  PEER,
  Tensor,
  Variable,
  adamwStep,
  adviseHugePages,
  embeddingBag,
  embeddingBagBackward,
  getNumThreads,
  setNumThreads,
  memBandwidth,
  noGrad,
  peerExperts,
  peerExpertsBackward,
  pkmTopk,
  pkmTopkBackward,
  sparseAdamwStep,
  SparseGradWorkspace,
  tidy,
  type SparseRows,
} from '../lib/index.js';
import { machine, median, parseArgs, printTable, time, type Timing } from './harness.js';
import { writeResults } from './harness.js';

const GiB = 2 ** 30;

// Deterministic uniform fill in [-a, a) (fast enough for 2^28 floats).
function fillUniform(x: Float32Array, seed: number, a: number): void {
  let s = seed >>> 0 || 1;
  for (let i = 0; i < x.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    x[i] = ((s >>> 0) / 4294967296 * 2 - 1) * a;
  }
}

let rounds_ = 7;

// Tables get transparent huge pages (see adviseHugePages) unless --no-huge is given.
let huge = true;

function table(shape: number[]): Tensor {
  const t = Tensor.zeros(shape);
  if (huge) adviseHugePages(t);
  return t;
}

function randTensor(shape: number[], seed: number, a: number): Tensor {
  const t = table(shape);
  fillUniform(t.data() as Float32Array, seed, a);
  return t;
}

function maxRssGiB(): number {
  return (process.resourceUsage().maxRSS * 1024) / GiB;
}

function disposeSparse(...s: SparseRows[]) {
  for (const x of s) {
    x.rows.dispose();
    x.values.dispose();
  }
}

const ms = (t: Timing) => t.median * 1e3;

// The optimizer steps run with lr = 0: the same memory traffic and arithmetic as a real step, but the tables
// and sub-keys do not drift over the hundreds of timed repetitions (a drifting sub-key set concentrates the
// retrieval on a few rows and would make later token counts unrepresentative).
const OPT = { lr: 0, weightDecay: 0 };

interface Row {
  [k: string]: string | number;
}

// Ratio of a kernel's time to its memory floor (bytes that must move / bandwidth). The dev boxes are shared VMs
// whose memory bandwidth swings with the neighbours' load (the copy probe read 44-78 GB/s between runs minutes
// apart on 2026-12-03), so rounds alternate a bandwidth probe (best of 2 over 128 MiB buffers) with one kernel
// call and each round's ratio pairs the call with the probe next to it. The table shows the median of those
// per-round ratios; the best kernel time over the best probe (the STREAM convention, which pairs a kernel call
// and a probe from different moments) is kept in the JSON. Two references: STREAM copy (the target's
// definition) and scattered 1 KiB row reads (the access pattern of these kernels, the practical ceiling of a
// gather).
function floorRatio(fn: () => void, bytes: number, rounds = rounds_) {
  fn();
  const ratios: number[] = [];
  const rowRatios: number[] = [];
  const copies: number[] = [];
  const rowBws: number[] = [];
  let copy = 0;
  let rowsBw = 0;
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const bw = memBandwidth(128 * 2 ** 20, getNumThreads(), 2);
    const t0 = process.hrtime.bigint();
    fn();
    const t = Number(process.hrtime.bigint() - t0) / 1e9;
    ratios.push(t / (bytes / (bw.copy * 1e9)));
    rowRatios.push(t / (bytes / (bw.rows * 1e9)));
    copies.push(bw.copy);
    rowBws.push(bw.rows);
    copy = Math.max(copy, bw.copy);
    rowsBw = Math.max(rowsBw, bw.rows);
    best = Math.min(best, t);
  }
  return {
    best: best / (bytes / (copy * 1e9)),
    bestRows: best / (bytes / (rowsBw * 1e9)),
    median: median(ratios),
    medianRows: median(rowRatios),
    copies,
    rowBws,
    copy,
    rows: rowsBw,
    bestSeconds: best,
  };
}

function timed(fn: () => void, T: number): Timing {
  // Fewer repetitions for the big cases: each call moves up to a few GB.
  return T >= 4096 ? time(fn, { warmup: 1, minRuns: 3, maxRuns: 7, minSeconds: 0.5 }) : time(fn, { warmup: 2, minRuns: 5, minSeconds: 0.3 });
}

function benchPkm(tokens: number[], rows: Row[], json: unknown[]): void {
  const H = 4;
  const k = 32;
  const n = 512;
  const Dk = 256;
  const D = 256;
  const N = n * n;
  const J = H * k;
  const values = randTensor([N, D], 1, 1 / Math.sqrt(D));
  const keys = randTensor([H, 2, n, Dk / 2], 2, 1 / Math.sqrt(Dk / 2));
  const mV = table([N, D]);
  const vV = table([N, D]);
  const steps = Tensor.zeros([N], { dtype: 'i32' });
  const mK = Tensor.zeros(keys.shape);
  const vK = Tensor.zeros(keys.shape);
  for (const T of tokens) {
    const q = randTensor([T, H, Dk], 10 + T, 1);
    const dOut = randTensor([T, D], 20 + T, 1);
    let sel = pkmTopk(q, keys, k);
    const tRetr = timed(() => {
      const s = pkmTopk(q, keys, k);
      for (const t of [s.indices, s.scores, s.weights]) t.dispose();
    }, T);
    let out = embeddingBag(values, sel.indices, sel.weights);
    out.dispose();
    const tGather = timed(() => embeddingBag(values, sel.indices, sel.weights).dispose(), T);
    let U = 0;
    const ws = new SparseGradWorkspace();
    const tGatherBwd = timed(() => {
      const b = embeddingBagBackward(dOut, values, sel.indices, sel.weights, { workspace: ws });
      U = b.dV.rows.size;
      b.dWeights.dispose();
      disposeSparse(b.dV);
    }, T);
    const bw1 = embeddingBagBackward(dOut, values, sel.indices, sel.weights, { workspace: ws });
    const tRetrBwd = timed(() => {
      const g = pkmTopkBackward(bw1.dWeights, q, keys, sel);
      g.dq.dispose();
      g.dkeys.dispose();
    }, T);
    const gk = pkmTopkBackward(bw1.dWeights, q, keys, sel);
    let step = 0;
    const tOpt = timed(() => {
      step++;
      sparseAdamwStep(values, mV, vV, steps, bw1.dV, OPT);
      adamwStep(keys, gk.dkeys, mK, vK, step, OPT);
    }, T);
    // Bytes that must move: forward reads J value rows per token and writes out; backward reads them again
    // (dWeights), reads dOut, writes U gradient rows.
    const fwdBytes = T * J * D * 4 + T * D * 4;
    const bwdBytes = T * J * D * 4 + T * D * 4 + U * D * 4;
    const fwd = ms(tRetr) + ms(tGather);
    const train = fwd + ms(tGatherBwd) + ms(tRetrBwd) + ms(tOpt);
    const fr = floorRatio(() => embeddingBag(values, sel.indices, sel.weights).dispose(), fwdBytes);
    const br = floorRatio(() => {
      const b = embeddingBagBackward(dOut, values, sel.indices, sel.weights, { workspace: ws });
      b.dWeights.dispose();
      disposeSparse(b.dV);
    }, bwdBytes);
    const r = {
      layer: 'PKM',
      T,
      'fwd tok/s': Math.round(T / (fwd / 1e3)),
      'train tok/s': Math.round(T / (train / 1e3)),
      'retr ms': ms(tRetr),
      'gather ms': ms(tGather),
      'gather GB/s': fwdBytes / tGather.median / 1e9,
      'fwd ×copy': fr.median,
      '×rows': fr.medianRows,
      'bwd gather ms': ms(tGatherBwd),
      'bwd GB/s': bwdBytes / tGatherBwd.median / 1e9,
      'bwd ×copy': br.median,
      '×rows ': br.medianRows,
      'copy GB/s': median([...fr.copies, ...br.copies]),
      'rows GB/s': median([...fr.rowBws, ...br.rowBws]),
      'bwd retr ms': ms(tRetrBwd),
      'opt ms': ms(tOpt),
      'rows U': U,
      'maxRSS GiB': maxRssGiB(),
    };
    rows.push(r);
    json.push({ ...r, fwdBytes, bwdBytes, floor: { fwd: fr, bwd: br }, timings: { tRetr, tGather, tGatherBwd, tRetrBwd, tOpt } });
    for (const t of [q, dOut, sel.indices, sel.scores, sel.weights, bw1.dWeights, gk.dq, gk.dkeys]) t.dispose();
    disposeSparse(bw1.dV);
    sel = undefined as never;
    out = undefined as never;
  }
  for (const t of [values, keys, mV, vV, steps, mK, vK]) t.dispose();
}

function benchPeer(tokens: number[], rows: Row[], json: unknown[]): void {
  const H = 8;
  const k = 16;
  const n = 1024;
  const Dk = 256;
  const D = 256;
  const N = n * n;
  const J = H * k;
  const U = randTensor([N, D], 3, 1 / Math.sqrt(D));
  const V = randTensor([N, D], 4, 1 / Math.sqrt(D));
  const keys = randTensor([1, 2, n, Dk / 2], 5, 1 / Math.sqrt(Dk / 2));
  const mU = table([N, D]);
  const vU = table([N, D]);
  const mV = table([N, D]);
  const vV = table([N, D]);
  const sU = Tensor.zeros([N], { dtype: 'i32' });
  const sV = Tensor.zeros([N], { dtype: 'i32' });
  const mK = Tensor.zeros(keys.shape);
  const vK = Tensor.zeros(keys.shape);
  for (const T of tokens) {
    const q = randTensor([T, H, Dk], 30 + T, 1);
    const x = randTensor([T, D], 40 + T, 1);
    const dOut = randTensor([T, D], 50 + T, 1);
    const sel = pkmTopk(q, keys, k);
    const tRetr = timed(() => {
      const s = pkmTopk(q, keys, k);
      for (const t of [s.indices, s.scores, s.weights]) t.dispose();
    }, T);
    const f = peerExperts(x, U, V, sel.indices, sel.weights, { act: 'gelu' });
    const tGather = timed(() => {
      const r = peerExperts(x, U, V, sel.indices, sel.weights, { act: 'gelu' });
      r.out.dispose();
      r.h.dispose();
    }, T);
    let nu = 0;
    const ws = new SparseGradWorkspace();
    const tGatherBwd = timed(() => {
      const b = peerExpertsBackward(dOut, x, U, V, sel.indices, sel.weights, f.h, { act: 'gelu', workspace: ws });
      nu = b.dU.rows.size;
      b.dx.dispose();
      b.dGates.dispose();
      disposeSparse(b.dU, b.dV);
    }, T);
    const b1 = peerExpertsBackward(dOut, x, U, V, sel.indices, sel.weights, f.h, { act: 'gelu', workspace: ws });
    const tRetrBwd = timed(() => {
      const g = pkmTopkBackward(b1.dGates, q, keys, sel);
      g.dq.dispose();
      g.dkeys.dispose();
    }, T);
    const gk = pkmTopkBackward(b1.dGates, q, keys, sel);
    let step = 0;
    const tOpt = timed(() => {
      step++;
      sparseAdamwStep(U, mU, vU, sU, b1.dU, OPT);
      sparseAdamwStep(V, mV, vV, sV, b1.dV, OPT);
      adamwStep(keys, gk.dkeys, mK, vK, step, OPT);
    }, T);
    // Forward reads J rows of U and of V per token (+ x, out); backward reads them again, reads x and dOut,
    // writes dx and one dU and one dV row per distinct expert touched.
    const fwdBytes = 2 * T * J * D * 4 + 2 * T * D * 4;
    const bwdBytes = 2 * T * J * D * 4 + 3 * T * D * 4 + 2 * nu * D * 4;
    const fwd = ms(tRetr) + ms(tGather);
    const train = fwd + ms(tGatherBwd) + ms(tRetrBwd) + ms(tOpt);
    const fr = floorRatio(() => {
      const o = peerExperts(x, U, V, sel.indices, sel.weights, { act: 'gelu' });
      o.out.dispose();
      o.h.dispose();
    }, fwdBytes);
    const br = floorRatio(() => {
      const b = peerExpertsBackward(dOut, x, U, V, sel.indices, sel.weights, f.h, { act: 'gelu', workspace: ws });
      b.dx.dispose();
      b.dGates.dispose();
      disposeSparse(b.dU, b.dV);
    }, bwdBytes);
    const r = {
      layer: 'PEER',
      T,
      'fwd tok/s': Math.round(T / (fwd / 1e3)),
      'train tok/s': Math.round(T / (train / 1e3)),
      'retr ms': ms(tRetr),
      'gather ms': ms(tGather),
      'gather GB/s': fwdBytes / tGather.median / 1e9,
      'fwd ×copy': fr.median,
      '×rows': fr.medianRows,
      'bwd gather ms': ms(tGatherBwd),
      'bwd GB/s': bwdBytes / tGatherBwd.median / 1e9,
      'bwd ×copy': br.median,
      '×rows ': br.medianRows,
      'copy GB/s': median([...fr.copies, ...br.copies]),
      'rows GB/s': median([...fr.rowBws, ...br.rowBws]),
      'bwd retr ms': ms(tRetrBwd),
      'opt ms': ms(tOpt),
      'rows U': nu,
      'maxRSS GiB': maxRssGiB(),
    };
    rows.push(r);
    json.push({ ...r, fwdBytes, bwdBytes, floor: { fwd: fr, bwd: br }, timings: { tRetr, tGather, tGatherBwd, tRetrBwd, tOpt } });
    for (const t of [q, x, dOut, sel.indices, sel.scores, sel.weights, f.out, f.h, b1.dx, b1.dGates, gk.dq, gk.dkeys])
      t.dispose();
    disposeSparse(b1.dU, b1.dV);
  }
  for (const t of [U, V, keys, mU, vU, mV, vV, sU, sV, mK, vK]) t.dispose();
}

// Sparse AdamW cost against table size: U random touched rows on tables of N = 2^16 and 2^20 rows (D = 256).
// Time should follow U, not N.
function benchOptScaling(rows: Row[], json: unknown[]): void {
  const D = 256;
  for (const U of [4096, 16384])
    for (const N of [1 << 16, 1 << 20]) {
      // Touch every page first (as in training, where the moments are resident).
      const p = randTensor([N, D], 6, 0.05);
      const m = randTensor([N, D], 8, 0);
      const v = randTensor([N, D], 9, 0);
      const steps = Tensor.zeros([N], { dtype: 'i32' });
      (steps.data() as Int32Array).fill(0);
      // U distinct random rows, ascending (as a backward returns them): random access in both tables.
      const pick = new Set<number>();
      let sd = 12345;
      while (pick.size < U) {
        sd = (Math.imul(sd, 1103515245) + 12345) >>> 0;
        pick.add(sd % N);
      }
      const ids = Int32Array.from([...pick].sort((a, b) => a - b));
      const g = randTensor([U, D], 7, 1);
      const grad: SparseRows = { rows: Tensor.from(ids), values: g, numRows: N };
      sparseAdamwStep(p, m, v, steps, grad, OPT);
      const t = time(() => sparseAdamwStep(p, m, v, steps, grad, OPT), { warmup: 2, minRuns: 7, minSeconds: 0.3 });
      const r = { N, U, D, 'opt ms': ms(t), 'GB/s': (U * D * 28) / t.median / 1e9 };
      rows.push(r);
      json.push({ ...r, timing: t });
      for (const x of [p, m, v, steps, grad.rows, g]) x.dispose();
    }
}

// The PEER layer of the training target (1024² experts, D = 256, H = 8, k = 16) trained the way a user
// would: forward (query projection, product-key retrieval, experts), a cross-entropy loss over D classes as a
// stand-in for the rest of a model, backward, AdamW (sparse row updates for U and V, dense for the rest),
// zeroGrad. The first step also first-touches the 4 GiB of moments, so it is reported apart.
function benchPeerLayer(steps: number): void {
  const D = 256;
  const T = 4096;
  const layer = new PEER(D, { kind: 'peer', heads: 8, subKeys: 1024, k: 16 }, { seed: 1 });
  const opt = new AdamW(layer.namedParameters(), { lr: 1e-3 });
  const x = new Variable(randTensor([T, D], 7, 1));
  const labels = Int32Array.from({ length: T }, (_, t) => (t * 7) % D);
  const table = layer.namedParameters().find(([, p]) => p.sparse)![1];
  const parts: Record<'fwd' | 'bwd' | 'opt' | 'step', number[]> = { fwd: [], bwd: [], opt: [], step: [] };
  let touched = 0;
  for (let s = 0; s < steps; s++) {
    const t0 = performance.now();
    let t1 = 0;
    let t2 = 0;
    tidy(() => {
      const loss = F.crossEntropy(layer.forward(x).y, Tensor.fromHost(labels, [T]));
      t1 = performance.now();
      loss.backward();
      t2 = performance.now();
      touched = table.sparseGrad!.rows.size;
      noGrad(() => opt.step());
      layer.zeroGrad();
      return null;
    });
    const t3 = performance.now();
    parts.fwd.push(t1 - t0);
    parts.bwd.push(t2 - t1);
    parts.opt.push(t3 - t2);
    parts.step.push(t3 - t0);
  }
  const later = (a: number[]) => median(a.slice(1));
  const row: Row = {
    layer: 'PEER (nn.PEER + AdamW)',
    T,
    'first step ms': Math.round(parts.step[0]),
    'step ms': Math.round(later(parts.step)),
    'train tok/s': Math.round(T / (later(parts.step) / 1e3)),
    'fwd ms': Math.round(later(parts.fwd)),
    'bwd ms': Math.round(later(parts.bwd)),
    'opt ms': Math.round(later(parts.opt)),
    'rows U': touched,
    'maxRSS GiB': maxRssGiB().toFixed(2),
  };
  printTable([row], `PEER layer training step, ${steps} steps (medians of steps 2..${steps}); its own process`);
  writeResults('pkm-layer', { loadavg: os.loadavg(), steps, parts, result: row, maxRssGiB: maxRssGiB() });
  x.dispose();
  opt.dispose();
  layer.dispose();
}

export async function run(args: string[]): Promise<void> {
  const opts = parseArgs(args);
  // `--device cuda`: PKM and PEER on cuda tensors (bench/pkm-cuda.ts).
  if (opts.device === 'cuda') return (await import('./pkm-cuda.js')).run(args);
  const tokens = typeof opts.tokens === 'string' ? opts.tokens.split(',').map(Number) : [1, 512, 4096];
  const only = typeof opts.only === 'string' ? opts.only : undefined;
  const bwMiB = 256;
  huge = !opts['no-huge'];
  // The library itself advises host arrays of 32 MiB or more onto huge pages; --no-huge turns that off too.
  if (!huge) process.env.SPARSE_FFN_HUGE_PAGES = '0';
  if (typeof opts.rounds === 'string') rounds_ = Math.max(1, Number(opts.rounds));
  if (typeof opts.threads === 'string') setNumThreads(Number(opts.threads));
  const m = machine();
  console.log(`machine: ${m.cpu}, ${m.threads} threads, ISA ${m.isa}, commit ${m.commit}`);
  const bwAll = memBandwidth(bwMiB * 2 ** 20, getNumThreads());
  console.log(
    `memory bandwidth (STREAM-like, ${bwMiB} MiB buffers, ${getNumThreads()} threads): copy ${bwAll.copy.toFixed(1)} GB/s, ` +
      `triad ${bwAll.triad.toFixed(1)} GB/s, read ${bwAll.read.toFixed(1)} GB/s`,
  );
  if (only === 'layer') return benchPeerLayer(typeof opts.steps === 'string' ? Math.max(2, Number(opts.steps)) : 10);
  const rows: Row[] = [];
  const json: unknown[] = [];
  if (!only || only === 'pkm') benchPkm(tokens, rows, json);
  if (!only || only === 'peer') benchPeer(tokens, rows, json);
  if (rows.length) printTable(rows, 'PKM (Dk=256, H=4, k=32, N=512², D=256) and PEER (D=256, Dk=256, H=8, k=16, N=1024²); ms are medians');
  console.log(
    `\n×copy / ×rows = median over rounds of (kernel time / (bytes that must move / the STREAM-copy or ` +
      `scattered-1KiB-row bandwidth probed just before it in the same round)); copy / rows GB/s = the probes' ` +
      `medians (JSON: also best kernel time / best probe); other columns are medians. ` +
      `Peak memory ${maxRssGiB().toFixed(2)} GiB max RSS; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`,
  );
  const optRows: Row[] = [];
  const optJson: unknown[] = [];
  if (!only || only === 'opt') {
    benchOptScaling(optRows, optJson);
    printTable(optRows, 'Sparse AdamW step: same touched rows U on tables of N rows (28 bytes moved per element)');
  }
  writeResults('pkm', { bandwidth: bwAll, loadavg: os.loadavg(), tokens, results: json, optimizerScaling: optJson, maxRssGiB: maxRssGiB() });
  if (!only) {
    // Its own process: this one's peak RSS already holds the op benchmarks' tables.
    const pass = args.filter((a, i) => a === '--no-huge' || a === '--threads' || args[i - 1] === '--threads');
    const r = spawnSync(process.execPath, [...process.execArgv, process.argv[1], 'pkm', '--only', 'layer', ...pass], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`pkm --only layer failed (exit ${r.status ?? r.signal})`);
  }
}
