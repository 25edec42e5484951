/**
 * Initialisers (methods.md §1.7). In a pre-LN stack of L layers with c = √(2/L): every linear map in the
 * layers is a truncated normal with std c/√fan_in; σ-MoE experts are initialised as one dense MLP of width
 * E·G (W1 std c/√D, W2 std c/√(E·G)); the selector rows are renormalised to equal norm, then the matrix is
 * rescaled to keep its global std. All draws come from a seeded Rng so a model is a function of its seed.
 */
import { Tensor } from '../tensor.js';
import { nativeOrNull } from '../native/loader.js';
import { Rng } from '../data/random.js';
import { isObject, showValue } from '../errors.js';
import { ConfigError } from './config.js';

/**
 * Where a layer's initial weights come from: `rng`, a generator the caller shares across layers (TransformerLM
 * passes one to all of its layers), or else a fresh generator seeded with `seed` (default 0), so a layer built
 * on its own is a function of its arguments.
 */
export interface InitOptions {
  rng?: Rng;
  seed?: number;
}

/** A layer's `opts` (undefined or an object); `layer` prefixes the error. */
export function checkLayerOptions(layer: string, opts: unknown): void {
  if (opts !== undefined && !isObject(opts))
    throw new ConfigError(`${layer}: opts must be an object, got ${showValue(opts)}`);
}

/** The generator `opts` names (see InitOptions; `opts` already passed checkLayerOptions); `layer` prefixes the errors. */
export function initRng(layer: string, opts: InitOptions | undefined): Rng {
  if (opts?.rng !== undefined) {
    if (!(opts.rng instanceof Rng)) throw new ConfigError(`${layer}: opts.rng must be an Rng, got ${String(opts.rng)}`);
    return opts.rng;
  }
  const seed = opts?.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new ConfigError(`${layer}: opts.seed must be an integer, got ${String(seed)}`);
  return new Rng(seed);
}

/** `v` (default `dflt`) as a finite number > 0, or a ConfigError naming `what`. */
export function positive(v: number | undefined, dflt: number, what: string): number {
  const x = v ?? dflt;
  if (typeof x !== 'number' || !(x > 0) || !Number.isFinite(x)) throw new ConfigError(`${what} must be a finite number > 0, got ${String(x)}`);
  return x;
}

/** A tensor of truncated-normal draws with the given std. */
export function truncNormal(shape: readonly number[], std: number, rng: Rng): Tensor {
  const t = Tensor.zeros(shape);
  const d = t.data() as Float32Array;
  const n = d.length;
  // The truncated (±2σ) normal has std ≈ 0.8796; divide so the result has exactly `std` (as the paper's code rescales).
  const k = std / 0.87962566;
  for (let i = 0; i < n; i++) d[i] = rng.truncNormal() * k;
  return t;
}

// From this many values on, normal() fills natively and in parallel (the same values: see fillNormal). A 1024²
// PEER layer's two 1 GiB tables took 22 s to draw in JS.
const NATIVE_FILL_MIN = 1 << 16;

let fillFn: ((out: Float32Array, state: number, std: number) => void) | null | undefined;

function nativeFill(): ((out: Float32Array, state: number, std: number) => void) | null {
  if (fillFn === undefined) {
    const b = nativeOrNull();
    fillFn = b && typeof b.fillNormal === 'function' ? b.fillNormal.bind(b) : null;
  }
  return fillFn;
}

/** A tensor of normal draws with the given std (rng.normal() · std for each value in order). */
export function normal(shape: readonly number[], std: number, rng: Rng): Tensor {
  const t = Tensor.zeros(shape);
  const d = t.data() as Float32Array;
  const fill = d.length >= NATIVE_FILL_MIN ? nativeFill() : null;
  if (fill) {
    fill(d, rng.state, std);
    rng.skip(2 * d.length);
  } else {
    for (let i = 0; i < d.length; i++) d[i] = rng.normal() * std;
  }
  return t;
}

/** Uniform draws in [-a, a). */
export function uniform(shape: readonly number[], a: number, rng: Rng): Tensor {
  const t = Tensor.zeros(shape);
  const d = t.data() as Float32Array;
  for (let i = 0; i < d.length; i++) d[i] = (2 * rng.next() - 1) * a;
  return t;
}

function std(d: Float32Array): number {
  let s = 0;
  let s2 = 0;
  for (const v of d) {
    s += v;
    s2 += v * v;
  }
  const m = s / d.length;
  return Math.sqrt(Math.max(0, s2 / d.length - m * m));
}

/**
 * σ-MoE selector init: W [E, D] ~ N(0, std²), every row scaled to unit L2 norm, then the whole matrix
 * scaled by one scalar so its global std equals the std it had before (all rows end with equal norm).
 */
export function selectorInit(E: number, D: number, stdev: number, rng: Rng, renormalize = true): Tensor {
  const t = normal([E, D], stdev, rng);
  if (!renormalize) return t;
  const w = t.data() as Float32Array;
  const before = std(w);
  for (let e = 0; e < E; e++) {
    let n2 = 0;
    for (let i = 0; i < D; i++) n2 += w[e * D + i] ** 2;
    const inv = 1 / Math.sqrt(n2 || 1);
    for (let i = 0; i < D; i++) w[e * D + i] *= inv;
  }
  const after = std(w);
  const s = after > 0 ? before / after : 1;
  for (let i = 0; i < w.length; i++) w[i] *= s;
  return t;
}
