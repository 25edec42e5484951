/**
 * Global gradient-norm clipping over a model's parameters (dense gradients and the values of row-sparse ones):
 * ‖g‖ = √Σ‖g_p‖², and every gradient scaled by maxNorm/‖g‖ when ‖g‖ > maxNorm. maxNorm ≤ 0 only measures.
 */
import type { Tensor } from '../tensor.js';
import { clipGradNorm as clipTensors } from '../ops/nn.js';
import type { Parameter } from '../nn/module.js';

/** Clips in place and returns the norm before clipping. */
export function clipGradNorm(params: Parameter[], maxNorm: number): number {
  const grads: Tensor[] = [];
  for (const p of params) {
    if (p.grad) grads.push(p.grad);
    if (p.sparseGrad) grads.push(p.sparseGrad.values);
  }
  return clipTensors(grads, maxNorm);
}
