/** The benchmark suites: name -> lazy module with run(args). Each suite lives in bench/<name>.ts. */
export const SUITES: Record<string, () => Promise<{ run(args: string[]): Promise<void> }>> = {
  // gemm
  gemm: () => import('./gemm.js'),
  // moe
  moe: () => import('./moe.js'),
  // pkm
  pkm: () => import('./pkm.js'),
  // attention
  attention: () => import('./attention.js'),
  // train
  train: () => import('./train.js'),
  // cuda
  'gemm-cuda': () => import('./gemm-cuda.js'),
  'moe-cuda': () => import('./moe-cuda.js'),
  'pkm-cuda': () => import('./pkm-cuda.js'),
};
