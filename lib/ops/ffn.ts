/**
 * Dense FFN (the baseline every sparse layer is compared with) and Top-K activation (methods.md §1.2).
 *
 *   pre = x·W1 (+ b1) [T, F];  h = act(pre), keeping only the topk largest entries per row when topk > 0;
 *   y = h·W2 (+ b2) [T, D].    x [T, D], w1 [D, F], w2 [F, D], b1 [F], b2 [D].
 *
 * CUDA tensors run native/kernels/cuda/ffn.cu (the products on gemm_f32, the top-k mask by a radix select per row).
 *
 * @example
 * ```ts
 * const { y, saved } = ffnDense(x, { w1, w2, b1, b2 }, { act: 'gelu' });
 * const g = ffnDenseBackward(dy, x, { w1, w2, b1, b2 }, saved, { act: 'gelu' }); // dx, dw1, dw2, db1, db2
 * const topk = ffnDense(x, { w1, w2 }, { act: 'relu', topk: 128 });            // TopKFFN
 * ```
 */
import { DeviceError, fail } from '../errors.js';
import { native } from '../native/loader.js';
import { expectTensor, sameDevice, Tensor } from '../tensor.js';
import { checkAct, type Activation } from './moe.js';

/** Dense FFN weights: w1 [D, F], w2 [F, D], optional b1 [F], b2 [D]. */
export interface FfnParams {
  w1: Tensor;
  w2: Tensor;
  b1?: Tensor;
  b2?: Tensor;
}

export interface FfnOptions {
  /** Activation, default 'relu'. */
  act?: Activation;
  /**
   * Top-K activation: keep the topk largest entries of each row of act(pre) (entries >= the topk-th largest;
   * the mask is a constant in backward). 0 (default) = dense.
   */
  topk?: number;
  /** 'cpu' (default) or 'ref' (scalar reference, for tests). */
  impl?: 'cpu' | 'ref';
}

/** Saved for backward: pre-activations and (masked) activations, both [T, F]. */
export interface FfnSaved {
  pre: Tensor;
  h: Tensor;
}

function dims(op: string, x: Tensor, p: FfnParams, opts: FfnOptions) {
  expectTensor(x, op, 'x', 'f32');
  if (x.rank !== 2) fail('shape', `${op}: x must have shape [T, D], got [${x.shape.join(', ')}]`);
  const [T, D] = x.shape;
  if (!p || typeof p !== 'object') fail('type', `${op}: params must be { w1, w2, b1?, b2? }`);
  expectTensor(p.w1, op, 'w1', 'f32');
  if (p.w1.rank !== 2) fail('shape', `${op}: w1 must have shape [D, F], got [${p.w1.shape.join(', ')}]`);
  const F = p.w1.shape[1];
  expectTensor(p.w1, op, 'w1', 'f32', [D, F]);
  expectTensor(p.w2, op, 'w2', 'f32', [F, D]);
  if (p.b1 !== undefined) expectTensor(p.b1, op, 'b1', 'f32', [F]);
  if (p.b2 !== undefined) expectTensor(p.b2, op, 'b2', 'f32', [D]);
  if (D < 1 || F < 1) fail('shape', `${op}: D and F must be >= 1, got D=${D}, F=${F}`);
  const device = sameDevice(op, { x, w1: p.w1, w2: p.w2, b1: p.b1, b2: p.b2 });
  if (device === 'cuda' && opts.impl === 'ref') throw new DeviceError(`${op}: impl 'ref' runs on the cpu; got cuda tensors`);
  const act = checkAct(op, opts.act ?? 'relu');
  const topk = opts.topk ?? 0;
  if (typeof topk !== 'number' || !Number.isInteger(topk) || topk < 0 || topk > F)
    fail('range', `${op}: topk must be an integer in [0, F=${F}], got ${String(topk)}`);
  if (opts.impl !== undefined && opts.impl !== 'cpu' && opts.impl !== 'ref')
    fail('range', `${op}: impl must be 'cpu' or 'ref', got ${String(opts.impl)}`);
  return { T, D, F, act, topk, ref: opts.impl === 'ref', device };
}

const f32 = (t: Tensor | undefined, op: string, name: string) => (t ? (t.nativeArg(op, name) as Float32Array) : null);

/** Dense FFN forward: y [T, D] and the saved pre-activations / activations. */
export function ffnDense(x: Tensor, p: FfnParams, opts: FfnOptions = {}): { y: Tensor; saved: FfnSaved } {
  const op = 'ffnDense';
  const { T, D, F, act, topk, ref, device } = dims(op, x, p, opts);
  if (device === 'cuda') {
    // CUDA: every output on the device (native/kernels/cuda/ffn.cu).
    const z = (shape: number[]) => Tensor.zeros(shape, { device });
    const [pred, hd, yd] = [z([T, F]), z([T, F]), z([T, D])];
    const a = (t: Tensor | undefined, name: string) => (t ? t.nativeArg(op, name) : null) as never;
    native().ffnDense(
      T, D, F, act, topk, false, a(x, 'x'), a(p.w1, 'w1'), a(p.b1, 'b1'), a(p.w2, 'w2'), a(p.b2, 'b2'), a(pred, 'pre'),
      a(hd, 'h'), a(yd, 'y'),
    );
    return { y: yd!, saved: { pre: pred!, h: hd! } };
  }
  const pre = new Float32Array(T * F);
  const h = new Float32Array(T * F);
  const y = new Float32Array(T * D);
  native().ffnDense(
    T, D, F, act, topk, ref, f32(x, op, 'x')!, f32(p.w1, op, 'w1')!, f32(p.b1, op, 'b1'), f32(p.w2, op, 'w2')!,
    f32(p.b2, op, 'b2'), pre, h, y,
  );
  return { y: Tensor.fromHost(y, [T, D]), saved: { pre: Tensor.fromHost(pre, [T, F]), h: Tensor.fromHost(h, [T, F]) } };
}

/** Gradients of ffnDense; db1/db2 are present when the params have b1/b2. */
export interface FfnGrads {
  dx: Tensor;
  dw1: Tensor;
  dw2: Tensor;
  db1?: Tensor;
  db2?: Tensor;
}

/** Dense FFN backward from dy [T, D] (the same options as the forward call). */
export function ffnDenseBackward(dy: Tensor, x: Tensor, p: FfnParams, saved: FfnSaved, opts: FfnOptions = {}): FfnGrads {
  const op = 'ffnDenseBackward';
  const { T, D, F, act, topk, ref } = dims(op, x, p, opts);
  expectTensor(dy, op, 'dy', 'f32', [T, D]);
  if (!saved || typeof saved !== 'object') fail('type', `${op}: saved must be the saved tensors of ffnDense`);
  expectTensor(saved.pre, op, 'saved.pre', 'f32', [T, F]);
  expectTensor(saved.h, op, 'saved.h', 'f32', [T, F]);
  if (sameDevice(op, { x, dy, pre: saved.pre, h: saved.h }) === 'cuda') {
    const z = (shape: number[]) => Tensor.zeros(shape, { device: 'cuda' });
    const g: FfnGrads = { dx: z([T, D]), dw1: z([D, F]), dw2: z([F, D]) };
    if (p.b1) g.db1 = z([F]);
    if (p.b2) g.db2 = z([D]);
    const a = (t: Tensor | undefined, name: string) => (t ? t.nativeArg(op, name) : null) as never;
    native().ffnDenseBackward(
      T, D, F, act, topk, false, a(x, 'x'), a(p.w1, 'w1'), a(p.w2, 'w2'), a(saved.pre, 'saved.pre'), a(saved.h, 'saved.h'),
      a(dy, 'dy'), a(g.dx, 'dx'), a(g.dw1, 'dw1'), a(g.db1, 'db1'), a(g.dw2, 'dw2'), a(g.db2, 'db2'),
    );
    return g;
  }
  const dx = new Float32Array(T * D);
  const dw1 = new Float32Array(D * F);
  const dw2 = new Float32Array(F * D);
  const db1 = p.b1 ? new Float32Array(F) : null;
  const db2 = p.b2 ? new Float32Array(D) : null;
  native().ffnDenseBackward(
    T, D, F, act, topk, ref, f32(x, op, 'x')!, f32(p.w1, op, 'w1')!, f32(p.w2, op, 'w2')!,
    f32(saved.pre, op, 'saved.pre')!, f32(saved.h, op, 'saved.h')!, f32(dy, op, 'dy')!, dx, dw1, db1, dw2, db2,
  );
  const out: FfnGrads = {
    dx: Tensor.fromHost(dx, [T, D]),
    dw1: Tensor.fromHost(dw1, [D, F]),
    dw2: Tensor.fromHost(dw2, [F, D]),
  };
  if (db1) out.db1 = Tensor.fromHost(db1, [F]);
  if (db2) out.db2 = Tensor.fromHost(db2, [D]);
  return out;
}
