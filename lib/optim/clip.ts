/**
 * Global gradient-norm clipping over a model's parameters (dense gradients and the values of row-sparse ones):
 * ‖g‖ = √Σ‖g_p‖², and every gradient scaled by maxNorm/‖g‖ when ‖g‖ > maxNorm. maxNorm ≤ 0 only measures.
 */
import { showValue } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { checkMaxNorm, clipGradNorm as clipTensors } from '../ops/nn.js';
import { Parameter } from '../nn/module.js';

/** Clips in place and returns the norm before clipping. */
export function clipGradNorm(params: Parameter[], maxNorm: number): number {
  if (!Array.isArray(params)) throw new TypeError(`clipGradNorm: params must be an array of Parameters (module.parameters()), got ${showValue(params)}`);
  params.forEach((p, i) => {
    if (!(p instanceof Parameter)) throw new TypeError(`clipGradNorm: params[${i}] must be a Parameter, got ${showValue(p)}`);
  });
  checkMaxNorm(maxNorm, 'clipGradNorm');
  const grads: Tensor[] = [];
  for (const p of params) {
    if (p.grad) grads.push(p.grad);
    if (p.sparseGrad) grads.push(p.sparseGrad.values);
  }
  return clipTensors(grads, maxNorm);
}
