/**
 * CUDA GEMM throughput: TFLOP/s (2·M·N·K per GEMM) of cudaGemmBf16 (tensor cores, f32 accumulate) and
 * cudaGemmF32 (SIMT) at square sizes, default 4096³ and 8192³, next to the device's measured peak: a
 * register-only loop of bf16 mma.sync.m16n8k16 (the instruction class gemm_bf16 uses) or of f32 FMAs over
 * every SM. Timed inside the addon with CUDA events (median of --iters runs after warm-up).
 *
 *   npm run bench -- gemm --device cuda [--sizes 4096,8192] [--iters 10] [--dtypes bf16,f32]   (or: gemm-cuda)
 *
 * Prints a table and writes bench/results/gemm-cuda-cuda.json. Needs the CUDA flavor (npm run build:cuda and a
 * GPU); elsewhere it says why and exits.
 */
import { backend, native } from '../lib/native/loader.js';
import { parseArgs, printTable, writeResults } from './harness.js';

export async function run(args: string[]): Promise<void> {
  const o = parseArgs(args);
  const b = backend();
  if (b.backend !== 'cuda' || !native().cudaBenchGemm) {
    console.log(`gemm-cuda: skipped, the CUDA flavor is not in use (${b.reason})`);
    return;
  }
  const n = native();
  const sizes = String(o.sizes ?? '4096,8192')
    .split(',')
    .map(Number);
  const iters = Number(o.iters ?? 10);
  const dtypes = String(o.dtypes ?? 'bf16,f32').split(',') as ('f32' | 'bf16')[];
  const dev = b.probe.devices?.[0];
  console.log(`device: ${dev?.name ?? '?'} (sm_${dev?.computeCapability.replace('.', '') ?? '?'}), archs ${b.probe.archs}`);

  const peak: Record<string, number> = {};
  for (const dt of dtypes) peak[dt] = n.cudaPeakTflops!(dt);
  const rows: Record<string, string | number>[] = [];
  for (const dt of dtypes) {
    for (const s of sizes) {
      const ms = Array.from(n.cudaBenchGemm!(dt, s, s, s, 2, iters)).sort((x, y) => x - y);
      const med = ms[Math.floor(ms.length / 2)];
      const tflops = (2 * s * s * s) / (med * 1e-3) / 1e12;
      rows.push({
        dtype: dt,
        'M=N=K': s,
        'ms (median)': med,
        'ms (min)': ms[0],
        'TFLOP/s': tflops,
        'peak TFLOP/s': peak[dt],
        '% of peak': (100 * tflops) / peak[dt],
      });
    }
  }
  printTable(rows, `CUDA GEMM (C = A·B, row-major, f32 accumulate), ${iters} runs each`);
  console.log('peak: bf16 = mma.sync.m16n8k16 loop, f32 = FMA loop (Hopper wgmma can exceed the mma.sync peak)');
  writeResults('gemm-cuda', { peak, rows }, 'cuda');
}
