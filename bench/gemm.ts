/**
 * CPU GEMM throughput: GFLOP/s (2·M·N·K per call) of gemm (C = A·B, f32, row-major) at squares 512–4096 and
 * the FFN shapes, with 1 and 2 threads, next to the naive reference (kernels/ref/gemm.cpp, single thread)
 * and the machine's measured FMA peak (independent FMA chains in registers) for the same thread count.
 * The reference is timed on the first R rows of C only (its cost is the same for every row), and the table
 * says so. Also: the transposed variants the FFN backward uses, and the gathered row-pointer GEMM that the
 * MoE grouped GEMM builds on (single thread, rows gathered from a larger matrix in scrambled order).
 *
 * OpenBLAS runs the same shapes in the same run (bench/openblas_gemm.py through numpy, which bundles OpenBLAS) when
 * python3 with numpy is on PATH; `--no-openblas` skips it.
 *
 *   npm run bench -- gemm [--quick] [--isa avx2|avx512|scalar] [--threads 1,2] [--no-openblas]
 *
 * Prints tables and writes bench/results/gemm-cpu.json.
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';

import { getNumThreads, info, setIsa, setNumThreads } from '../lib/index.js';
import { native } from '../lib/native/loader.js';
import { parseArgs, printTable, time, writeResults } from './harness.js';

type Isa = 'scalar' | 'avx2' | 'avx512';

function fill(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}

interface OpenBlasRun {
  blas: string;
  results: { gflops: number; gflopsP10: number }[];
}

/** The shapes through numpy/OpenBLAS with `threads` threads, or the reason it could not run. */
function openBlas(shapes: Shape[], threads: number, minSeconds: number): OpenBlasRun | string {
  // The script sits in bench/ (next to this file's source; dist/bench/ when compiled).
  const script = fileURLToPath(new URL('../../bench/openblas_gemm.py', import.meta.url));
  const r = spawnSync('python3', [script], {
    input: JSON.stringify({ shapes, min_seconds: minSeconds }),
    env: { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) },
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  if (r.error) return `python3 not runnable (${r.error.message})`;
  if (r.status !== 0) return (r.stderr.trim().split('\n').pop() ?? 'failed').slice(0, 120);
  return JSON.parse(r.stdout) as OpenBlasRun;
}

interface Shape {
  name: string;
  M: number;
  K: number;
  N: number;
  ta?: boolean;
  tb?: boolean;
}

export async function run(args: string[]): Promise<void> {
  const o = parseArgs(args);
  // `--device cuda`: the CUDA GEMM suite (TFLOP/s at 4096³ and 8192³ against the measured peak).
  if (o.device === 'cuda') return (await import('./gemm-cuda.js')).run(args);
  const quick = o.quick === true;
  const n = native();
  const bestIsa = info().cpu.bestIsa as Isa;
  const isa = (typeof o.isa === 'string' ? o.isa : bestIsa) as Isa;
  setIsa(isa);
  const savedThreads = getNumThreads();
  const threadList = String(o.threads ?? '1,2')
    .split(',')
    .map(Number);

  const squares = quick ? [1024] : [512, 1024, 2048, 4096];
  const shapes: Shape[] = [
    ...squares.map((s) => ({ name: `square ${s}`, M: s, K: s, N: s })),
    { name: 'FFN up T×D×F', M: 4096, K: 512, N: 2048 },
    { name: 'FFN down T×F×D', M: 4096, K: 2048, N: 512 },
    { name: 'FFN T×D×F', M: 2048, K: 256, N: 1024 },
  ];
  if (!quick) {
    // The FFN backward: dX = dY·Wᵀ-style (transB) and dW = Xᵀ·dY (transA), at the 4096×512×2048 shape.
    shapes.push({ name: 'FFN dX (B transposed)', M: 4096, K: 2048, N: 512, tb: true });
    shapes.push({ name: 'FFN dW (A transposed)', M: 512, K: 4096, N: 2048, ta: true });
  }

  const loadBefore = os.loadavg()[0];
  try {
    // Peak first: the best of several short runs (~40 ms each), since a short run is the likeliest to see the
    // cores undisturbed; the peak is a property of the machine, not a distribution.
    const peak: Record<number, number> = {};
    const flopsPerIter = isa === 'avx512' ? 768 : isa === 'avx2' ? 192 : 96;
    for (const t of threadList) {
      setNumThreads(Math.max(t, 1));
      const probe = n.fmaPeak(isa, t, 1e5);
      const iters = Math.max(1e4, Math.round((0.04 * probe * 1e9) / t / flopsPerIter)); // ~40 ms
      peak[t] = 0;
      for (let r = 0; r < 10; r++) peak[t] = Math.max(peak[t], n.fmaPeak(isa, t, iters));
    }

    const rows: Record<string, string | number>[] = [];
    const json: Record<string, unknown>[] = [];
    for (const s of shapes) {
      const { M, K, N } = s;
      const ta = !!s.ta,
        tb = !!s.tb;
      const A = fill(M * K, 1),
        B = fill(K * N, 2),
        C = new Float32Array(M * N);
      const lda = ta ? M : K,
        ldb = tb ? K : N;
      const flops = 2 * M * N * K;
      const call = () => n.gemm(ta, tb, M, N, K, 1, A, lda, B, ldb, 0, C, N, 1, 0, 0, 0);
      const per: Record<number, number> = {};
      const best: Record<number, number> = {};
      for (const t of threadList) {
        setNumThreads(t);
        const tm = time(call, { warmup: 1, minRuns: quick ? 3 : 5, minSeconds: quick ? 0.2 : 0.4, maxRuns: 50 });
        per[t] = flops / tm.median / 1e9;
        best[t] = flops / tm.p10 / 1e9;
      }
      // The naive reference on the first R rows (row i of C costs the same for every i).
      setNumThreads(1);
      const R = Math.max(1, Math.min(M, Math.round((quick ? 3e7 : 8e7) / (2 * N * K))));
      const callRef = () => n.gemmRef(ta, tb, R, N, K, 1, A, lda, B, ldb, 0, C, N, 1, 0, 0, 0);
      const tr = time(callRef, { warmup: 1, minRuns: 3, minSeconds: 0.2, maxRuns: 10 });
      const refG = (2 * R * N * K) / tr.median / 1e9;
      const row: Record<string, string | number> = {
        shape: s.name,
        'M×K×N': `${M}×${K}×${N}${ta ? ' Aᵀ' : ''}${tb ? ' Bᵀ' : ''}`,
      };
      for (const t of threadList) {
        row[`GFLOP/s ${t}T`] = per[t];
        row[`% peak ${t}T`] = (100 * per[t]) / peak[t];
      }
      row['naive ref GFLOP/s'] = refG;
      row['ref rows'] = R === M ? 'all' : `${R} of ${M}`;
      rows.push(row);
      json.push({
        ...s,
        ta,
        tb,
        gflops: per,
        gflopsP10: best,
        pctPeak: Object.fromEntries(threadList.map((t) => [t, (100 * per[t]) / peak[t]])),
        ref: { gflops: refG, rows: R },
      });
    }

    // The gathered GEMM (gemm_f32_rows), single thread, against gemm on the same contiguous problem.
    const gathered: Record<string, string | number>[] = [];
    const gshapes = quick ? [[512, 512, 2048]] : [[512, 512, 2048], [128, 512, 2048], [512, 2048, 512]];
    setNumThreads(1);
    for (const [M, K, N] of gshapes) {
      const pool = 4 * M; // gather M of 4·M token rows
      const X = fill(pool * K, 3),
        W = fill(K * N, 4),
        Y = new Float32Array(pool * N);
      const pick = Int32Array.from({ length: M }, (_, i) => (i * 2654435761) % pool);
      const aRows = pick.map((r) => r * K),
        cRows = pick.map((r) => r * N),
        bRows = Int32Array.from({ length: K }, (_, k) => k * N);
      const flops = 2 * M * N * K;
      const rowsCall = () => n.gemmRows(false, false, M, N, K, 1, X, aRows, W, bRows, 0, Y, cRows);
      const tg = time(rowsCall, { warmup: 1, minSeconds: 0.3 });
      const Xc = X.subarray(0, M * K),
        Yc = new Float32Array(M * N);
      const plainCall = () => n.gemm(false, false, M, N, K, 1, Xc, K, W, N, 0, Yc, N, 1, 0, 0, 0);
      const tc = time(plainCall, { warmup: 1, minSeconds: 0.3 });
      gathered.push({
        'M×K×N': `${M}×${K}×${N}`,
        'gemmRows GFLOP/s': flops / tg.median / 1e9,
        'gemm GFLOP/s': flops / tc.median / 1e9,
        '% peak 1T': (100 * flops) / tg.median / 1e9 / peak[1],
      });
    }

    // OpenBLAS on the same shapes, right after ours (same run, same machine state).
    const blas: Record<number, OpenBlasRun | string> = {};
    if (o['no-openblas'] !== true)
      for (const t of threadList) {
        blas[t] = openBlas(shapes, t, quick ? 0.2 : 0.4);
        const b = blas[t];
        rows.forEach((row, i) => {
          row[`OpenBLAS ${t}T`] = typeof b === 'string' ? 'n/a' : b.results[i].gflops;
          row[`ours/OpenBLAS ${t}T`] = typeof b === 'string' ? 'n/a' : `${(Number(row[`GFLOP/s ${t}T`]) / b.results[i].gflops).toFixed(2)}×`;
          if (typeof b !== 'string') Object.assign(json[i], { [`openblas${t}T`]: b.results[i] });
        });
      }

    const loadAfter = os.loadavg()[0];
    // Few rows (generation, tiny expert tiles): the unpacked path, B read in place; GB/s of B streamed.
    const fewRows: Record<string, string | number>[] = [];
    setNumThreads(threadList[threadList.length - 1]);
    const fewShapes: [number, number, number, boolean][] = quick
      ? [[1, 512, 2048, false]]
      : [
          [1, 512, 2048, false],
          [1, 512, 2048, true],
          [4, 2048, 512, false],
          [4, 2048, 512, true],
        ];
    for (const [M, K, N, tb] of fewShapes) {
      const A = fill(M * K, 5),
        B = fill(K * N, 6),
        C = new Float32Array(M * N);
      const call = () => n.gemm(false, tb, M, N, K, 1, A, K, B, tb ? K : N, 0, C, N, 1, 0, 0, 0);
      const tm = time(call, { warmup: 3, minSeconds: 0.2 });
      fewRows.push({
        'M×K×N': `${M}×${K}×${N}${tb ? ' Bᵀ' : ''}`,
        'µs': tm.median * 1e6,
        'GFLOP/s': (2 * M * N * K) / tm.median / 1e9,
        'B GB/s': (4 * K * N) / tm.median / 1e9,
      });
    }

    printTable(rows, `CPU GEMM (${isa}), C = op(A)·op(B), f32 row-major; GFLOP/s = 2·M·N·K / median time`);
    const peaks = threadList.map((t) => `${peak[t].toFixed(1)} GFLOP/s on ${t} thread${t > 1 ? 's' : ''}`);
    console.log(`measured FMA peak (${isa}): ${peaks.join(', ')}`);
    for (const t of Object.keys(blas)) {
      const b = blas[Number(t)];
      console.log(`OpenBLAS ${t}T: ${typeof b === 'string' ? `not measured: ${b}` : `${b.blas} via numpy matmul, same shapes, median`}`);
    }
    console.log('naive ref = kernels/ref/gemm.cpp (triple loop, f64 accumulation, 1 thread), timed on the rows listed');
    const cpus = os.cpus().length;
    console.log(`machine load (1-min average) ${loadBefore.toFixed(1)} before, ${loadAfter.toFixed(1)} after, ${cpus} CPUs`);
    printTable(gathered, 'Gathered GEMM (gemm_f32_rows: A rows gathered, C rows scattered), 1 thread');
    printTable(fewRows, `Few rows (M <= 12: unpacked, B read in place), ${threadList[threadList.length - 1]} threads`);
    // The best ISA's run is the headline file; other ISAs get their own (gemm-avx2-cpu.json, ...).
    writeResults(isa === bestIsa ? 'gemm' : `gemm-${isa}`, {
      isa,
      threads: threadList,
      peak,
      loadavg: { before: loadBefore, after: loadAfter },
      openblas: Object.fromEntries(Object.entries(blas).map(([t, b]) => [t, typeof b === 'string' ? { error: b } : { blas: b.blas }])),
      shapes: json,
      gathered,
      fewRows,
    });
  } finally {
    setNumThreads(savedThreads);
    setIsa(bestIsa);
  }
}
