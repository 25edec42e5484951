/**
 * Differentiable functions over Variables. Each is one tape node: the forward calls a native op (lib/ops)
 * and the backward closure calls its native backward. The few glue ops here that have no kernel (residual
 * add, scaling a loss, reshape) are single passes over memory.
 */
import { ShapeError } from '../errors.js';
import { Tensor, shapeStr } from '../tensor.js';
import { Variable, record1 } from '../autograd.js';

function sameShape(op: string, a: Variable, b: Variable): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i]))
    throw new ShapeError(`${op}: shapes differ: ${shapeStr(a.shape)} vs ${shapeStr(b.shape)}`);
}

function host(t: Tensor, op: string): Float32Array {
  if (t.device !== 'cpu' || t.dtype !== 'f32') throw new Error(`${op}: glue op runs on CPU f32 tensors only, got ${t.dtype} on ${t.device}`);
  return t.data() as Float32Array;
}

/** y = a + b (same shapes): the residual connection. */
export function add(a: Variable, b: Variable): Variable {
  sameShape('add', a, b);
  const x = host(a.data, 'add');
  const z = host(b.data, 'add');
  const y = new Float32Array(x.length);
  for (let i = 0; i < y.length; i++) y[i] = x[i] + z[i];
  return record1('add', [a, b], Tensor.fromHost(y, a.shape), (g) => [g.clone(), g.clone()]);
}

/** y = Σ_i alpha_i · v_i for scalar (one-element) variables: combines losses (CE + γ·regulariser). */
export function weightedSum(vs: Variable[], alphas: number[]): Variable {
  if (vs.length !== alphas.length) throw new ShapeError(`weightedSum: ${vs.length} values but ${alphas.length} weights`);
  let s = 0;
  vs.forEach((v, i) => {
    if (v.data.size !== 1) throw new ShapeError(`weightedSum: value ${i} must have one element, got ${shapeStr(v.shape)}`);
    s += alphas[i] * v.data.item();
  });
  return record1('weightedSum', vs, Tensor.fromHost(Float32Array.of(s), []), (g) => {
    const gv = g.item();
    return vs.map((v, i) => Tensor.full(v.shape, alphas[i] * gv));
  });
}

/** y = alpha · x. */
export function scale(x: Variable, alpha: number): Variable {
  const xs = host(x.data, 'scale');
  const y = Float32Array.from(xs, (v) => v * alpha);
  return record1('scale', [x], Tensor.fromHost(y, x.shape), (g) => {
    const gs = host(g, 'scale');
    return [Tensor.fromHost(Float32Array.from(gs, (v) => v * alpha), x.shape)];
  });
}

/** A view with another shape (the gradient is reshaped back). */
export function reshape(x: Variable, shape: readonly number[]): Variable {
  const y = x.data.reshape(shape);
  return record1('reshape', [x], y, (g) => [g.reshape(x.shape)]);
}
