/**
 * σ-MoE layer on the GPU: `npm run bench -- moe --device cuda [--points sigma,coarse] [--rounds 5] [--no-gemm]`
 * (or the suite `moe-cuda`).
 *
 * Points (the issue's): sigma D=512, G=128, E=32, K=4, T=32768 and coarse D=4096, G=14336, E=8, K=2, T=8192.
 * Random routing (uniform logits in [-1, 1) per token and expert), sigmoid gates, ReLU, no biases, f32.
 * Everything lives on the device: z, x, dy and the weights are cuda tensors and the routing comes from moeRoute on
 * the cuda z, so no call reads anything back.
 *
 * Each point: the MoE layer (moeRoute + moeExperts) forward and forward+backward (+ moeExpertsBackward and
 * moeRouteBackward), next to our dense FFN (ffnDense / ffnDenseBackward on cuda) at equal FLOPs (F = K·G), and
 * next to our dense f32 GEMM alone at the same FLOPs: the six products of a dense FFN step at these shapes, timed
 * one by one with CUDA events (cudaBenchGemm, untransposed operands) and summed. TFLOP/s count useful work only:
 * 4·T·K·D·G per forward, 3× that for forward+backward (the router's 2·T·D·E is left out on both sides).
 * Times are wall clock around each call with cudaDeviceSynchronize before and after (bench/cuda.ts), medians of
 * --rounds rounds that call every function in turn. `f+b queued/total`: the time until a forward+backward call
 * returns to the host over its total time; well below 1 (at the coarse point) means no call inside the step waits
 * for the device (the "no device-to-host synchronisation inside a training step").
 *
 * Prints a table and writes bench/results/moe-cuda.json with the GPU's name. Where the CUDA flavor is not in use
 * it says why and exits.
 */
import { Tensor } from '../lib/index.js';
import { native } from '../lib/native/loader.js';
import { cudaUnavailable, deviceGiB, deviceUniform, gpuName, queueTime, sync, timeInterleaved } from './cuda.js';
import { machine, median, parseArgs, printTable, writeResults } from './harness.js';
import { denseFfnStep, moeLayerStep } from './moe.js';

interface Point {
  name: string;
  D: number;
  G: number;
  E: number;
  k: number;
  T: number;
}

export const POINTS: Point[] = [
  { name: 'sigma', D: 512, G: 128, E: 32, k: 4, T: 32768 },
  { name: 'coarse', D: 4096, G: 14336, E: 8, k: 2, T: 8192 },
];

/** Median ms of one f32 GEMM M×N×K (CUDA events inside the addon). */
function gemmMs(M: number, N: number, K: number, iters: number): number {
  return median(Array.from(native().cudaBenchGemm!('f32', M, N, K, 1, iters)));
}

export async function run(argv: string[]): Promise<void> {
  const why = cudaUnavailable();
  if (why) {
    console.log(`moe-cuda: skipped, ${why}`);
    return;
  }
  const args = parseArgs(argv);
  const names = typeof args.points === 'string' ? args.points.split(',') : POINTS.map((p) => p.name);
  const points = POINTS.filter((p) => names.includes(p.name));
  const rounds = Math.max(1, Number(args.rounds ?? 5));
  const withGemm = !args['no-gemm'];
  const gpu = gpuName();
  const m = machine();
  console.log(`moe-cuda: ${gpu}; host ${m.cpu}; commit ${m.commit}; ${rounds} rounds`);

  const rows: Record<string, string | number>[] = [];
  const results: unknown[] = [];
  for (const p of points) {
    const { D, G, E, k, T } = p;
    const F = k * G;
    const flop = 4 * T * k * D * G;
    const t0 = Date.now();
    const w1 = deviceUniform([E, D, G], 1, 1 / Math.sqrt(D));
    const w2 = deviceUniform([E, G, D], 2, 1 / Math.sqrt(G));
    const dense = { w1: deviceUniform([D, F], 3, 1 / Math.sqrt(D)), w2: deviceUniform([F, D], 4, 1 / Math.sqrt(F)) };
    const x = deviceUniform([T, D], 5, 1);
    const dy = deviceUniform([T, D], 6, 1);
    const z = deviceUniform([T, E], 7, 1); // random routing: uniform logits
    sync();
    console.log(`\n[${p.name}] D=${D} G=${G} E=${E} K=${k} T=${T}: inputs on the device in ${((Date.now() - t0) / 1e3).toFixed(1)} s, ${deviceGiB().toFixed(2)} GiB`);

    const moe = moeLayerStep(x, z, dy, { w1, w2 }, k);
    const ffn = denseFfnStep(x, dy, dense);
    const fns: Record<string, () => void> = {
      route: () => moe.route().dispose(),
      'moe.fwd': moe.fwd,
      'moe.fb': moe.fb,
      'dense.fwd': ffn.fwd,
      'dense.fb': ffn.fb,
    };
    const s = timeInterleaved(fns, rounds);
    // No device-to-host synchronisation inside a step: the host returns from a whole forward+backward long before
    // the device finishes it (a ratio near 1 means a call waited for the device).
    const queued = { moeFwdBwd: queueTime(fns['moe.fb']), denseFwdBwd: queueTime(fns['dense.fb']) };
    // Our dense GEMM alone at equal FLOPs: forward x·W1 (T×F×D) and h·W2 (T×D×F); backward dh = dy·W2ᵀ (T×F×D),
    // dW2 = hᵀ·dy (F×D×T), dx = dpre·W1ᵀ (T×D×F), dW1 = xᵀ·dpre (D×F×T).
    let gemm: { fwdMs: number; fbMs: number; shapes: Record<string, number> } | undefined;
    if (withGemm) {
      const it = T * D * F >= 1e11 ? 5 : 20;
      const shapes = {
        'T×F×D': gemmMs(T, F, D, it),
        'T×D×F': gemmMs(T, D, F, it),
        'F×D×T': gemmMs(F, D, T, it),
        'D×F×T': gemmMs(D, F, T, it),
      };
      const fwdMs = shapes['T×F×D'] + shapes['T×D×F'];
      gemm = { fwdMs, fbMs: 2 * fwdMs + shapes['F×D×T'] + shapes['D×F×T'], shapes };
    }
    const ms = (sec: number) => sec * 1e3;
    const tf = (f: number, sec: number) => f / sec / 1e12;
    rows.push({
      point: p.name,
      'route ms': ms(s.route),
      'moe fwd ms': ms(s['moe.fwd']),
      'moe fwd TF/s': tf(flop, s['moe.fwd']),
      'moe f+b ms': ms(s['moe.fb']),
      'moe f+b TF/s': tf(3 * flop, s['moe.fb']),
      'dense f+b ms': ms(s['dense.fb']),
      'dense f+b TF/s': tf(3 * flop, s['dense.fb']),
      'moe/dense fwd': s['moe.fwd'] / s['dense.fwd'],
      'moe/dense f+b': s['moe.fb'] / s['dense.fb'],
      'gemm f+b ms': gemm ? gemm.fbMs : '-',
      'gemm TF/s': gemm ? (3 * flop) / (gemm.fbMs * 1e-3) / 1e12 : '-',
      'moe/gemm f+b': gemm ? ms(s['moe.fb']) / gemm.fbMs : '-',
      'f+b queued/total': queued.moeFwdBwd / s['moe.fb'],
    });
    results.push({
      ...p,
      F,
      flopFwd: flop,
      flopFwdBwd: 3 * flop,
      rounds,
      seconds: s,
      tflops: {
        moeFwd: tf(flop, s['moe.fwd']),
        moeFwdBwd: tf(3 * flop, s['moe.fb']),
        denseFwd: tf(flop, s['dense.fwd']),
        denseFwdBwd: tf(3 * flop, s['dense.fb']),
        gemmFwdBwd: gemm ? (3 * flop) / (gemm.fbMs * 1e-3) / 1e12 : null,
      },
      ratios: {
        moeOverDenseFwd: s['moe.fwd'] / s['dense.fwd'],
        moeOverDenseFwdBwd: s['moe.fb'] / s['dense.fb'],
        moeOverGemmFwd: gemm ? ms(s['moe.fwd']) / gemm.fwdMs : null,
        moeOverGemmFwdBwd: gemm ? ms(s['moe.fb']) / gemm.fbMs : null,
      },
      gemmMs: gemm ?? null,
      // Seconds until a forward+backward call returns to the host (its work queued), against its total time.
      hostQueueSeconds: queued,
      deviceGiB: deviceGiB(),
    });
    for (const t of [w1, w2, dense.w1, dense.w2, x, dy, z]) t.dispose();
    sync();
  }
  printTable(
    rows,
    `σ-MoE layer on ${gpu}: route + experts (device routing, random, ReLU, f32) vs dense FFN (F = K·G) and dense f32 GEMM at equal FLOPs; medians`,
  );
  console.log('TF/s = useful FLOPs (4·T·K·D·G forward, ×3 forward+backward) / time; target: moe/gemm f+b ≤ 1.4');
  console.log('f+b queued/total: host time until the call returns / total time (near 1: something inside waited for the device)');
  writeResults('moe', { gpu, rounds, results }, 'cuda');
}
