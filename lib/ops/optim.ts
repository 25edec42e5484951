/**
 * AdamW update steps (Loshchilov & Hutter 2019, decoupled weight decay), as torch.optim.AdamW computes them:
 *
 *   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε)
 *
 * - {@link adamwStep}: dense, every element, one step counter t for the tensor.
 * - {@link sparseAdamwStep}: row-sparse for huge tables (PKM values, PEER experts), "lazy moments": only the
 *   rows in the gradient change, each with its own step counter (`steps[r]`, incremented when row r is updated)
 *   for its bias correction; untouched rows keep p, m, v and their counter (no decay of any kind). So it equals
 *   {@link adamwStep} bit for bit on rows touched at every step, and costs time proportional to the rows touched,
 *   not to N.
 *
 * Both run natively, multithreaded, in place; on CUDA tensors they run the CUDA kernels (sparse: the rows, on the
 * device, are not checked by the host: rows outside [0, N) are skipped and distinct rows are the caller's promise). A per-table learning rate is just a different `lr` per call
 * (Lample et al. train PKM values with Adam at a constant 1e-3).
 *
 * @example
 * ```ts
 * const m = Tensor.zeros(w.shape), v = Tensor.zeros(w.shape);
 * adamwStep(w, grad, m, v, step, { lr: 3e-4, weightDecay: 0.1 });
 * const steps = Tensor.zeros([N], { dtype: 'i32' });
 * sparseAdamwStep(values, mV, vV, steps, dV, { lr: 1e-3, weightDecay: 0 });
 * ```
 */
import { DeviceError } from '../errors.js';
import { native } from '../native/loader.js';
import { expectTensor, sameDevice, shapeStr, Tensor } from '../tensor.js';
import type { SparseRows } from './pkm.js';

export interface AdamwOptions {
  /** Learning rate (≥ 0). */
  lr: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay (default 0.01, as torch.optim.AdamW). */
  weightDecay?: number;
  /** 'ref' runs the float64 reference (tests). */
  impl?: 'cpu' | 'ref';
}

function hyper(opts: AdamwOptions, op: string): [number, number, number, number, number, boolean] {
  if (!opts || typeof opts !== 'object') throw new TypeError(`${op}: opts must be an object with lr, got ${String(opts)}`);
  const impl = opts.impl ?? 'cpu';
  if (impl !== 'cpu' && impl !== 'ref') throw new RangeError(`${op}: impl must be 'cpu' or 'ref', got ${String(impl)}`);
  return [opts.lr, opts.beta1 ?? 0.9, opts.beta2 ?? 0.999, opts.eps ?? 1e-8, opts.weightDecay ?? 0.01, impl === 'ref'];
}

// All tensors on one device; CUDA tensors run the CUDA kernels (native/kernels/cuda/nn.cu), 'ref' only on the cpu.
function oneDevice(op: string, tensors: Record<string, Tensor>, ref: boolean): void {
  const dev = sameDevice(op, tensors);
  if (dev === 'cuda' && ref) throw new DeviceError(`${op}: impl 'ref' runs on the cpu; got cuda tensors`);
}

/**
 * One dense AdamW step, in place on `p`, `m`, `v` (all f32, same shape as `g`).
 *
 * @param step the step number after this update (1 for the first step), used for bias correction.
 * @example
 * ```ts
 * for (let step = 1; step <= steps; step++) adamwStep(w, grad(w), m, v, step, { lr: 1e-3 });
 * ```
 */
export function adamwStep(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: number, opts: AdamwOptions): void {
  const op = 'adamwStep';
  expectTensor(p, op, 'p', 'f32');
  expectTensor(g, op, 'g', 'f32', p.shape);
  expectTensor(m, op, 'm', 'f32', p.shape);
  expectTensor(v, op, 'v', 'f32', p.shape);
  if (!Number.isInteger(step) || step < 1) throw new RangeError(`${op}: step must be an integer >= 1, got ${String(step)}`);
  const [lr, b1, b2, eps, wd, ref] = hyper(opts, op);
  oneDevice(op, { p, g, m, v }, ref);
  native().adamwStep(
    p.nativeArg(op, 'p'), g.nativeArg(op, 'g'), m.nativeArg(op, 'm'), v.nativeArg(op, 'v'), lr, b1, b2, eps, wd, step, ref,
  );
}

/**
 * One row-sparse AdamW step with lazy moments, in place: for each row r of `grad` (distinct, ascending, as the
 * backward ops return them) `steps[r]` is incremented and row r of `p`, `m`, `v` gets the AdamW update with bias
 * correction at `steps[r]`. Other rows are untouched. Never reads or writes more than the touched rows.
 *
 * @param p table f32 [N, D]; m, v its moments (f32 [N, D], zero-initialised); steps i32 [N] (zero-initialised).
 * @example
 * ```ts
 * const { dV } = embeddingBagBackward(dOut, values, sel.indices, sel.weights);
 * sparseAdamwStep(values, mV, vV, steps, dV, { lr: 1e-3, weightDecay: 0 });
 * ```
 */
export function sparseAdamwStep(
  p: Tensor,
  m: Tensor,
  v: Tensor,
  steps: Tensor,
  grad: SparseRows,
  opts: AdamwOptions,
): void {
  const op = 'sparseAdamwStep';
  expectTensor(p, op, 'p', 'f32');
  if (p.rank !== 2) throw new RangeError(`${op}: p must be a table [N, D], got ${shapeStr(p.shape)}`);
  const [N, D] = p.shape;
  expectTensor(m, op, 'm', 'f32', p.shape);
  expectTensor(v, op, 'v', 'f32', p.shape);
  expectTensor(steps, op, 'steps', 'i32', [N]);
  if (!grad || typeof grad !== 'object') throw new TypeError(`${op}: grad must be a SparseRows, got ${String(grad)}`);
  expectTensor(grad.rows, op, 'grad.rows', 'i32');
  if (grad.rows.rank !== 1) throw new RangeError(`${op}: grad.rows must be [U], got ${shapeStr(grad.rows.shape)}`);
  expectTensor(grad.values, op, 'grad.values', 'f32', [grad.rows.size, D]);
  if (grad.numRows !== undefined && grad.numRows !== N)
    throw new RangeError(`${op}: grad is for a table of ${grad.numRows} rows, p has N=${N}`);
  const [lr, b1, b2, eps, wd, ref] = hyper(opts, op);
  oneDevice(op, { p, m, v, steps, rows: grad.rows, values: grad.values }, ref);
  native().sparseAdamwStep(
    p.nativeArg(op, 'p'), m.nativeArg(op, 'm'), v.nativeArg(op, 'v'), steps.nativeArg(op, 'steps'),
    grad.rows.nativeArg(op, 'grad.rows'), grad.values.nativeArg(op, 'grad.values'), N, D, lr, b1, b2, eps, wd, ref,
  );
}
