/**
 * Module: the unit layers and models are built from. A module owns named parameters (leaf Variables with
 * requiresGrad), named buffers (state that is saved but not trained) and named child modules; it exposes
 * them as a flat, dotted, deterministic-order state dict (`blocks.0.ffn.w1`) for checkpoints.
 *
 * @example
 * ```ts
 * class Scale extends Module {
 *   w = this.param('w', Tensor.full([4], 1));
 *   forward(x: Variable) { return F.mul(x, this.w); }
 * }
 * const m = new Scale();
 * m.parameters().length;   // 1
 * m.eval();                // m.training === false (dropout off, expert dropout off)
 * ```
 */
import { ShapeError, isObject, showValue } from '../errors.js';
import { Tensor, expectTensor, keep, shapeStr } from '../tensor.js';
import { Variable } from '../autograd.js';
import { SparseGradWorkspace } from '../ops/pkm.js';

/**
 * A layer's input as the [T, width] Variable its forward works on: a Tensor is taken as a constant (no
 * gradient). Anything else, or another shape, is a clear error naming the layer, e.g.
 * `SigmaMoE.forward: x must have shape [T, 128], got [32, 64]`.
 */
export function layerInput(op: string, x: Variable | Tensor, width: number): Variable {
  const v = x instanceof Tensor ? new Variable(x) : x;
  if (!(v instanceof Variable)) throw new TypeError(`${op}: x must be a Variable or a Tensor, got ${showValue(x)}`);
  if (v.shape.length !== 2 || v.shape[1] !== width) throw new ShapeError(`${op}: x must have shape [T, ${width}], got ${shapeStr(v.shape)}`);
  return v;
}

export interface ParamOptions {
  /**
   * Sparse-row parameters (PKM values, PEER expert tables) are updated by the sparse AdamW step, which only
   * touches the rows a step read; they may have their own learning rate.
   */
  sparse?: boolean;
  /** Excluded from weight decay (LayerNorm, biases). */
  noDecay?: boolean;
}

/** A trainable leaf variable with optimiser hints. */
export class Parameter extends Variable {
  readonly sparse: boolean;
  readonly noDecay: boolean;
  /**
   * Row-sparse gradient of a sparse parameter [N, D]: distinct rows ascending (i32 [U]) and their gradients
   * (f32 [U, D]). Dense `grad` stays null for these.
   */
  sparseGrad: { rows: Tensor; values: Tensor; numRows: number } | null = null;
  /**
   * @internal Host buffers the backward ops write this parameter's sparse gradient into, reused from step to step
   * (see {@link Parameter.reusableSparseWorkspace}); dropped by dispose().
   */
  sparseWorkspace: SparseGradWorkspace | null = null;

  constructor(data: Tensor, name: string, opts: ParamOptions = {}) {
    super(data, { requiresGrad: true, name });
    this.sparse = opts.sparse ?? false;
    this.noDecay = opts.noDecay ?? false;
  }

  /** Adds a row-sparse gradient (takes ownership of rows and values); merges with an earlier one by row. */
  accumulateSparse(rows: Tensor, values: Tensor): void {
    const op = `${this.describe()}: accumulateSparse`;
    expectTensor(rows, op, 'rows', 'i32');
    expectTensor(values, op, 'values', 'f32');
    const [N, D] = this.shape;
    if (values.shape[1] !== D || values.shape[0] !== rows.size)
      throw new ShapeError(`${this.describe()}: sparse gradient must be [U, ${D}] for ${rows.size} rows, got ${shapeStr(values.shape)}`);
    if (!this.sparseGrad) {
      this.sparseGrad = { rows: keep(rows), values: keep(values), numRows: N };
      return;
    }
    // Merge two ascending row lists (gradient accumulation across backward calls, or two reads of one table).
    const ra = this.sparseGrad.rows.data() as Int32Array;
    const va = this.sparseGrad.values.data() as Float32Array;
    const rb = rows.data() as Int32Array;
    const vb = values.data() as Float32Array;
    const outR: number[] = [];
    const outV = new Float32Array((ra.length + rb.length) * D);
    let i = 0;
    let j = 0;
    while (i < ra.length || j < rb.length) {
      const u = outR.length;
      if (j >= rb.length || (i < ra.length && ra[i] < rb[j])) {
        outR.push(ra[i]);
        outV.set(va.subarray(i * D, (i + 1) * D), u * D);
        i++;
      } else if (i >= ra.length || rb[j] < ra[i]) {
        outR.push(rb[j]);
        outV.set(vb.subarray(j * D, (j + 1) * D), u * D);
        j++;
      } else {
        outR.push(ra[i]);
        for (let d = 0; d < D; d++) outV[u * D + d] = va[i * D + d] + vb[j * D + d];
        i++;
        j++;
      }
    }
    this.sparseGrad.rows.dispose();
    this.sparseGrad.values.dispose();
    rows.dispose();
    values.dispose();
    const U = outR.length;
    this.sparseGrad = {
      rows: keep(Tensor.fromHost(Int32Array.from(outR), [U])),
      values: keep(Tensor.fromHost(outV.slice(0, U * D), [U, D])),
      numRows: N,
    };
  }

  override dispose(): void {
    super.dispose();
    this.sparseWorkspace = null;
  }

  /**
   * @internal The workspace a backward op may write the sparse gradients of this parameter and of `others` (tables
   * the same op reads at the same rows) into: this parameter's own, kept from step to step, when none of them holds
   * a gradient yet. A 1024² table's gradient is hundreds of MB per step: as fresh arrays it costs page faults on
   * every step and stays resident until V8 collects it. A pending gradient (accumulation across backward calls, a
   * table read twice) may be a view of the workspace, so such a backward gets fresh arrays instead.
   */
  reusableSparseWorkspace(...others: Parameter[]): SparseGradWorkspace | undefined {
    if (this.sparseGrad || others.some((p) => p.sparseGrad)) return undefined;
    return (this.sparseWorkspace ??= new SparseGradWorkspace());
  }

  override zeroGrad(): void {
    super.zeroGrad();
    if (this.sparseGrad) {
      this.sparseGrad.rows.dispose();
      this.sparseGrad.values.dispose();
      this.sparseGrad = null;
    }
  }
}

function checkPrefix(prefix: unknown, op: string): void {
  if (typeof prefix !== 'string') throw new TypeError(`${op}: prefix must be a string, got ${showValue(prefix)}`);
}

export abstract class Module {
  training = true;
  readonly #params = new Map<string, Parameter>();
  readonly #buffers = new Map<string, Tensor>();
  readonly #children = new Map<string, Module>();

  /** Registers a parameter under `name`. */
  protected param(name: string, data: Tensor, opts: ParamOptions = {}): Parameter {
    if (this.#params.has(name)) throw new Error(`Module: parameter ${name} registered twice`);
    const p = new Parameter(data, name, opts);
    this.#params.set(name, p);
    return p;
  }

  /** Registers a child module under `name` (arrays of children use `name.i`). */
  protected child<M extends Module>(name: string, m: M): M {
    if (this.#children.has(name)) throw new Error(`Module: child ${name} registered twice`);
    this.#children.set(name, m);
    return m;
  }

  /** Registers a buffer (saved in the state dict, not trained). */
  protected buffer(name: string, t: Tensor): Tensor {
    this.#buffers.set(name, t);
    return t;
  }

  /** (name, parameter) pairs of this module and its children, depth-first, in registration order. */
  namedParameters(prefix = ''): [string, Parameter][] {
    checkPrefix(prefix, 'Module.namedParameters');
    const out: [string, Parameter][] = [];
    const seen = new Set<Parameter>();
    const walk = (m: Module, pre: string): void => {
      for (const [n, p] of m.#params) {
        // A parameter shared by several modules (one router for every MoE layer) appears once.
        if (seen.has(p)) continue;
        seen.add(p);
        out.push([pre + n, p]);
      }
      for (const [n, c] of m.#children) walk(c, `${pre}${n}.`);
    };
    walk(this, prefix);
    return out;
  }

  parameters(): Parameter[] {
    return this.namedParameters().map(([, p]) => p);
  }

  namedBuffers(prefix = ''): [string, Tensor][] {
    checkPrefix(prefix, 'Module.namedBuffers');
    const out: [string, Tensor][] = [];
    for (const [n, b] of this.#buffers) out.push([prefix + n, b]);
    for (const [n, c] of this.#children) out.push(...c.namedBuffers(`${prefix}${n}.`));
    return out;
  }

  /** Child modules, depth-first (this module first). */
  modules(): Module[] {
    const out: Module[] = [this];
    for (const c of this.#children.values()) out.push(...c.modules());
    return out;
  }

  /** Total number of parameter elements (shared parameters counted once). */
  numParameters(): number {
    return this.parameters().reduce((a, p) => a + p.data.size, 0);
  }

  /** Training mode: dropout and expert dropout on, routing statistics collected. */
  train(on = true): this {
    if (typeof on !== 'boolean') throw new TypeError(`Module.train: on must be a boolean, got ${showValue(on)}`);
    for (const m of this.modules()) m.training = on;
    return this;
  }

  /** Evaluation mode (same as train(false)). */
  eval(): this {
    return this.train(false);
  }

  zeroGrad(): void {
    for (const p of this.parameters()) p.zeroGrad();
  }

  /** Parameters and buffers by dotted name. The tensors are the live ones (not copies). */
  stateDict(): Map<string, Tensor> {
    const sd = new Map<string, Tensor>();
    for (const [n, p] of this.namedParameters()) sd.set(n, p.data);
    for (const [n, b] of this.namedBuffers()) sd.set(n, b);
    return sd;
  }

  /**
   * Copies values from a state dict into the live tensors. Every entry must be present with the same
   * shape and dtype (strict), so a checkpoint of another architecture fails with a clear message.
   */
  loadStateDict(sd: Map<string, Tensor> | Record<string, Tensor>, opts: { strict?: boolean } = {}): void {
    const op = 'loadStateDict';
    if (!(sd instanceof Map) && !isObject(sd))
      throw new TypeError(`${op}: sd must be a Map<string, Tensor> or an object of Tensors (a state dict), got ${showValue(sd)}`);
    if (!isObject(opts)) throw new TypeError(`${op}: opts must be an object ({ strict?: boolean }), got ${showValue(opts)}`);
    if (opts.strict !== undefined && typeof opts.strict !== 'boolean') throw new TypeError(`${op}: opts.strict must be a boolean, got ${showValue(opts.strict)}`);
    const src = sd instanceof Map ? sd : new Map(Object.entries(sd));
    for (const [k, t] of src as Map<unknown, unknown>)
      if (!(t instanceof Tensor)) throw new TypeError(`${op}: ${String(k)} must be a Tensor, got ${showValue(t)}`);
    const strict = opts.strict ?? true;
    const own = this.stateDict();
    if (strict) {
      const missing = [...own.keys()].filter((k) => !src.has(k));
      const extra = [...src.keys()].filter((k) => !own.has(k));
      if (missing.length || extra.length)
        throw new ShapeError(
          `loadStateDict: keys differ (missing: ${missing.slice(0, 5).join(', ') || 'none'}${missing.length > 5 ? ', ...' : ''}; unexpected: ${extra.slice(0, 5).join(', ') || 'none'}${extra.length > 5 ? ', ...' : ''})`,
        );
    }
    for (const [k, dst] of own) {
      const s = src.get(k);
      if (!s) continue;
      if (s.dtype !== dst.dtype || s.size !== dst.size || s.shape.some((d, i) => d !== dst.shape[i]))
        throw new ShapeError(
          `loadStateDict: ${k} must be ${dst.dtype} ${shapeStr(dst.shape)}, got ${s.dtype} ${shapeStr(s.shape)}`,
        );
      copyInto(dst, s);
    }
  }

  /** Frees every parameter, gradient and buffer. */
  dispose(): void {
    for (const p of this.parameters()) p.dispose();
    for (const [, b] of this.namedBuffers()) b.dispose();
  }
}

/** dst ← src (same size), across devices. */
export function copyInto(dst: Tensor, src: Tensor): void {
  if (dst.device === 'cpu') {
    const d = dst.data();
    const s = src.data();
    (d as Float32Array).set(s as Float32Array);
    return;
  }
  throw new Error('copyInto: device tensors are not supported yet (CPU only)');
}
