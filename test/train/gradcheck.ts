/**
 * Gradient checks of whole tape graphs against finite differences.
 *
 * Our kernels are f32, so a float64 finite difference of the full graph is not available; instead we check
 * directional derivatives: for each parameter tensor p and a random unit direction u, the central difference
 * (L(p + εu) − L(p − εu)) / 2ε (L accumulated in float64 from the f32 forward) must match ⟨∇_p L, u⟩ from
 * backward within a relative tolerance. Projecting onto a direction sums the per-element f32 rounding noise
 * instead of dividing each element's noise by ε, so ε = 1e-2 … 1e-3 gives 3–4 significant digits. Routing
 * (top-k, ReLU kinks) is piecewise constant; the step is small enough that no selection flips on the
 * seeds used (checked by the tests through the selection ids where it matters).
 */
import { expect } from 'vitest';

import { Tensor, tidy } from '../../lib/index.js';
import { Variable, noGrad } from '../../lib/autograd.js';
import { Parameter } from '../../lib/nn/module.js';
import { randn } from '../helpers.js';

/** The gradient of p as a dense array (zeros where a sparse gradient has no row). */
function denseGrad(p: Variable): Float32Array {
  const out = new Float32Array(p.data.size);
  if (p instanceof Parameter && p.sparseGrad) {
    const rows = p.sparseGrad.rows.data() as Int32Array;
    const vals = p.sparseGrad.values.data() as Float32Array;
    const D = p.shape[1];
    rows.forEach((r, i) => out.set(vals.subarray(i * D, (i + 1) * D), r * D));
  } else if (p.grad) out.set(p.grad.data() as Float32Array);
  return out;
}

/** ⟨g, u⟩ for a dense or sparse gradient of p. */
function analyticDot(p: Variable, u: Float32Array): number {
  if (p instanceof Parameter && p.sparseGrad) {
    const rows = p.sparseGrad.rows.data() as Int32Array;
    const vals = p.sparseGrad.values.data() as Float32Array;
    const D = p.shape[1];
    let s = 0;
    rows.forEach((r, i) => {
      for (let d = 0; d < D; d++) s += vals[i * D + d] * u[r * D + d];
    });
    return s;
  }
  if (!p.grad) return 0;
  const g = p.grad.data() as Float32Array;
  let s = 0;
  for (let i = 0; i < g.length; i++) s += g[i] * u[i];
  return s;
}

export interface GradCheckOptions {
  eps?: number;
  rtol?: number;
  atol?: number;
  seed?: number;
  /** Mix the analytic gradient's direction into the probe direction (default true). */
  alongGradient?: boolean;
}

/**
 * `loss()` runs the forward and returns the scalar loss Variable (recorded when grad is on). Checks every
 * variable in `params` (leaves with requiresGrad). Returns the (analytic, numeric) pairs.
 */
export function checkDirectional(
  params: [string, Variable][],
  loss: () => Variable,
  opts: GradCheckOptions = {},
): { name: string; analytic: number; numeric: number }[] {
  const { eps = 1e-2, rtol = 2e-2, atol = 1e-5, seed = 7 } = opts;
  for (const [, p] of params) p.zeroGrad();
  const L = loss();
  L.backward();
  L.dispose();
  const out: { name: string; analytic: number; numeric: number }[] = [];
  // Direction u = normalise(ĝ + r̂): half along the analytic gradient (a large, well-resolved signal that checks
  // its magnitude) and half random (checks its direction).
  const dirs = params.map(([, p], i) => {
    const n = p.data.size;
    const r = randn(n, seed + 31 * i);
    const g = denseGrad(p);
    const unit = (a: Float32Array): void => {
      let s = 0;
      for (const v of a) s += v * v;
      s = Math.sqrt(s) || 1;
      for (let j = 0; j < n; j++) a[j] /= s;
    };
    unit(r);
    if (opts.alongGradient !== false) {
      unit(g);
      for (let j = 0; j < n; j++) r[j] += g[j];
      unit(r);
    }
    return r;
  });
  const analytic = params.map(([, p], i) => analyticDot(p, dirs[i]));
  for (const [, p] of params) p.zeroGrad();
  params.forEach(([name, p], i) => {
    const u = dirs[i];
    const n = p.data.size;
    const x = p.data.data() as Float32Array;
    const orig = x.slice();
    const evalAt = (s: number): number => {
      for (let j = 0; j < n; j++) x[j] = orig[j] + s * eps * u[j];
      let v = NaN;
      noGrad(() =>
        tidy(() => {
          v = loss().data.item();
          return null;
        }),
      );
      return v;
    };
    const lp = evalAt(1);
    const lm = evalAt(-1);
    x.set(orig);
    out.push({ name, analytic: analytic[i], numeric: (lp - lm) / (2 * eps) });
  });
  for (const [, p] of params) p.zeroGrad();
  for (const r of out) {
    const err = Math.abs(r.analytic - r.numeric);
    expect(err, `${r.name}: analytic ${r.analytic} vs numeric ${r.numeric}`).toBeLessThanOrEqual(atol + rtol * Math.abs(r.numeric));
  }
  return out;
}

/** A leaf Variable with normal entries. */
export function leaf(shape: number[], seed: number, scale = 1, requiresGrad = true): Variable {
  const n = shape.reduce((a, b) => a * b, 1);
  return new Variable(Tensor.fromHost(randn(n, seed, scale), shape), { requiresGrad });
}
