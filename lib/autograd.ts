/**
 * Autograd: a tape of coarse ops, micrograd-small.
 *
 * A `Variable` wraps a Tensor (its value) and, after `backward()`, a gradient of the same shape. Each
 * differentiable op computes its output with a native forward kernel and records one tape node whose
 * backward closure calls the native backward kernel: `dInputs = backward(dOutputs)`. `backward()` walks the
 * nodes reachable from the root in reverse topological order, accumulates gradients (a variable used twice
 * gets the sum) and then frees what the step produced: every node's saved tensors, the gradients of
 * non-leaf variables and the values of non-leaf variables (the root's value is kept). Leaf gradients
 * (parameters) accumulate across backward() calls until `zeroGrad()`, which is what gradient accumulation
 * needs. Inside `noGrad()` nothing is recorded and ops save nothing for backward. Values that no graph owns
 * (outputs of ops over constants, every output under noGrad) are freed by the caller: wrap a step or an
 * evaluation in `tidy()`; leaf gradients are kept out of tidy scopes.
 *
 * @example
 * ```ts
 * const w = new Variable(Tensor.from([[1, 2], [3, 4]]), { requiresGrad: true });
 * const loss = F.sum(F.matmul(x, w));     // ops from lib/nn/functional.ts record themselves
 * loss.backward();                        // w.grad now holds dloss/dw; intermediates are freed
 * ```
 */
import { DisposedError, DTypeError, ShapeError, isObject, showValue } from './errors.js';
import { Tensor, keep, shapeStr } from './tensor.js';

let gradEnabled = true;
let nextId = 0;

/** Whether ops currently record themselves on the tape. */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn with recording switched off (evaluation, generation, optimiser updates). Nests; restores. */
export function noGrad<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw new TypeError(`noGrad: fn must be a function, got ${showValue(fn)}`);
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

// ---- profiling: time per scope (layer kind), forward and backward --------------------------------------------

/** Per-scope milliseconds when enabled (bench/train.ts splits a step's time by layer kind with it). */
export const profile = { enabled: false, forward: new Map<string, number>(), backward: new Map<string, number>() };
let currentScope = 'other';

/** Runs fn under a profiling scope name: its forward time and the backward time of the nodes it records. */
export function scope<T>(name: string, fn: () => T): T {
  const prev = currentScope;
  currentScope = name;
  const t0 = profile.enabled ? performance.now() : 0;
  try {
    return fn();
  } finally {
    currentScope = prev;
    if (profile.enabled) {
      const dt = performance.now() - t0;
      profile.forward.set(name, (profile.forward.get(name) ?? 0) + dt);
      // The enclosing scope did not spend this time itself.
      if (prev !== name && prev !== 'other') profile.forward.set(prev, (profile.forward.get(prev) ?? 0) - dt);
    }
  }
}

/** Backward closure of one node: output gradients in (null where an output got none), input gradients out. */
export type BackwardFn = (gradOutputs: (Tensor | null)[]) => (Tensor | null | undefined)[];

/** One recorded op. */
export interface TapeNode {
  readonly op: string;
  readonly inputs: readonly (Variable | null)[];
  readonly outputs: readonly Variable[];
  backward: BackwardFn | null;
  /** Tensors the node owns for its backward (pre-activations, indices, ...); freed after backward. */
  saved: Tensor[];
  /** Profiling scope the node was recorded in. */
  readonly scope: string;
}

export interface VariableOptions {
  requiresGrad?: boolean;
  name?: string;
}

/** A tensor value on the tape, with an optional gradient. */
export class Variable {
  readonly id = nextId++;
  #data: Tensor;
  /** The accumulated gradient (same shape and device as the value), or null. */
  grad: Tensor | null = null;
  readonly requiresGrad: boolean;
  /** The node that produced this variable; null for leaves (parameters, inputs). */
  node: TapeNode | null = null;
  name: string | undefined;

  constructor(data: Tensor, opts: VariableOptions = {}) {
    if (!(data instanceof Tensor)) throw new TypeError(`Variable: data must be a Tensor, got ${showValue(data)}`);
    if (!isObject(opts)) throw new TypeError(`Variable: opts must be an object (VariableOptions), got ${showValue(opts)}`);
    if (opts.requiresGrad !== undefined && typeof opts.requiresGrad !== 'boolean')
      throw new TypeError(`Variable: opts.requiresGrad must be a boolean, got ${showValue(opts.requiresGrad)}`);
    if (opts.name !== undefined && typeof opts.name !== 'string') throw new TypeError(`Variable: opts.name must be a string, got ${showValue(opts.name)}`);
    this.#data = data;
    this.requiresGrad = opts.requiresGrad ?? false;
    this.name = opts.name;
  }

  /** The value. */
  get data(): Tensor {
    return this.#data;
  }

  /** Replaces the value (optimisers and load_state_dict); shape and dtype must match. */
  set data(t: Tensor) {
    if (!(t instanceof Tensor)) throw new TypeError(`Variable${this.name ? ` ${this.name}` : ''}: new value must be a Tensor, got ${showValue(t)}`);
    if (t.dtype !== this.#data.dtype || t.shape.length !== this.#data.shape.length || t.shape.some((d, i) => d !== this.#data.shape[i]))
      throw new ShapeError(
        `Variable${this.name ? ` ${this.name}` : ''}: new value must be ${this.#data.dtype} ${shapeStr(this.#data.shape)}, got ${t.dtype} ${shapeStr(t.shape)}`,
      );
    this.#data = t;
  }

  get shape(): readonly number[] {
    return this.#data.shape;
  }

  get isLeaf(): boolean {
    return this.node === null;
  }

  /** Frees the gradient. */
  zeroGrad(): void {
    this.grad?.dispose();
    this.grad = null;
  }

  /**
   * Back-propagates from this variable. A scalar root gets the seed 1 by default; otherwise pass a seed of
   * the same shape. With `retainGraph` nothing is freed (call it again, or inspect intermediates).
   */
  backward(seed?: Tensor, opts: { retainGraph?: boolean } = {}): void {
    backward(this, seed, opts);
  }

  /** Adds g into the gradient (takes ownership of g). */
  accumulate(g: Tensor): void {
    if (!(g instanceof Tensor)) throw new TypeError(`Variable.accumulate: g must be a Tensor, got ${showValue(g)}`);
    if (g.shape.length !== this.shape.length || g.shape.some((d, i) => d !== this.shape[i]))
      throw new ShapeError(
        `autograd: gradient for ${this.describe()} has shape ${shapeStr(g.shape)}, expected ${shapeStr(this.shape)}`,
      );
    if (!this.grad) {
      // Leaf gradients outlive the tidy() scope of the step that produced them (gradient accumulation).
      this.grad = this.node === null ? keep(g) : g;
      return;
    }
    addInPlace(this.grad, g);
    g.dispose();
  }

  describe(): string {
    return `${this.name ?? (this.node ? `output of ${this.node.op}` : 'leaf')} ${shapeStr(this.shape)}`;
  }

  /** Frees the value and gradient. */
  dispose(): void {
    this.#data.dispose();
    this.zeroGrad();
  }
}

function checkInputs(fn: string, inputs: readonly unknown[]): void {
  for (let i = 0; i < inputs.length; i++) {
    const v = inputs[i];
    if (v !== null && v !== undefined && !(v instanceof Variable))
      throw new TypeError(`${fn}: inputs[${i}] must be a Variable, null or undefined, got ${showValue(v)}`);
  }
}

function checkTensors(fn: string, what: string, ts: unknown): void {
  if (!Array.isArray(ts)) throw new TypeError(`${fn}: ${what} must be an array of Tensors, got ${showValue(ts)}`);
  for (let i = 0; i < ts.length; i++)
    if (!(ts[i] instanceof Tensor)) throw new TypeError(`${fn}: ${what}[${i}] must be a Tensor, got ${showValue(ts[i])}`);
}

/** Whether an op over these inputs must record itself (inputs: Variables; null / undefined are skipped). */
export function needsGrad(...inputs: (Variable | null | undefined)[]): boolean {
  checkInputs('needsGrad', inputs);
  return gradEnabled && inputs.some((v) => v && (v.requiresGrad || v.node !== null));
}

/**
 * Records an op on the tape and returns its outputs as Variables. When no input needs a gradient (or
 * inside noGrad) nothing is recorded and `saved` is freed at once. Inputs may be null (optional bias).
 */
export function record(
  op: string,
  inputs: (Variable | null | undefined)[],
  outputs: Tensor[],
  backward: BackwardFn,
  saved: Tensor[] = [],
): Variable[] {
  if (typeof op !== 'string' || op.length === 0) throw new TypeError(`record: op must be a non-empty string (the op's name), got ${showValue(op)}`);
  if (!Array.isArray(inputs)) throw new TypeError(`record(${op}): inputs must be an array of Variables (or null), got ${showValue(inputs)}`);
  checkInputs(`record(${op})`, inputs);
  checkTensors(`record(${op})`, 'outputs', outputs);
  if (typeof backward !== 'function') throw new TypeError(`record(${op}): backward must be a function, got ${showValue(backward)}`);
  checkTensors(`record(${op})`, 'saved', saved);
  const outs = outputs.map((t) => new Variable(t));
  if (!needsGrad(...inputs)) {
    for (const s of saved) s.dispose();
    return outs;
  }
  const node: TapeNode = { op, inputs: inputs.map((v) => v ?? null), outputs: outs, backward, saved, scope: currentScope };
  for (const o of outs) o.node = node;
  return outs;
}

/** Single-output shorthand for record(). */
export function record1(
  op: string,
  inputs: (Variable | null | undefined)[],
  output: Tensor,
  backward: (g: Tensor) => (Tensor | null | undefined)[],
  saved: Tensor[] = [],
): Variable {
  if (typeof backward !== 'function') throw new TypeError(`record1(${String(op)}): backward must be a function, got ${showValue(backward)}`);
  return record(op, inputs, [output], (gs) => (gs[0] ? backward(gs[0]) : inputs.map(() => null)), saved)[0];
}

/** Nodes reachable from root, in topological order (producers before consumers). */
function topo(root: Variable): TapeNode[] {
  const order: TapeNode[] = [];
  const seen = new Set<TapeNode>();
  // Iterative DFS: deep models would overflow the JS stack with recursion.
  const stack: [TapeNode, number][] = [];
  if (root.node) stack.push([root.node, 0]);
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [node, i] = top;
    if (i === 0 && seen.has(node)) {
      stack.pop();
      continue;
    }
    seen.add(node);
    if (i < node.inputs.length) {
      top[1]++;
      const child = node.inputs[i]?.node;
      if (child && !seen.has(child)) stack.push([child, 0]);
    } else {
      stack.pop();
      order.push(node);
    }
  }
  return order;
}

function backward(root: Variable, seed: Tensor | undefined, opts: { retainGraph?: boolean }): void {
  const op = 'Variable.backward';
  if (seed !== undefined) {
    if (!(seed instanceof Tensor)) throw new TypeError(`${op}: seed must be a Tensor (or undefined for a scalar root), got ${showValue(seed)}`);
    if (seed.isDisposed) throw new DisposedError(`${op}: seed is disposed`);
    if (seed.dtype !== root.data.dtype) throw new DTypeError(`${op}: seed must be ${root.data.dtype} like the root, got ${seed.dtype}`);
    if (seed.shape.length !== root.shape.length || seed.shape.some((d, i) => d !== root.shape[i]))
      throw new ShapeError(`${op}: seed must have the root's shape ${shapeStr(root.shape)}, got ${shapeStr(seed.shape)}`);
  }
  if (!isObject(opts)) throw new TypeError(`${op}: opts must be an object ({ retainGraph?: boolean }), got ${showValue(opts)}`);
  if (!root.node && !root.requiresGrad)
    throw new Error(`backward: ${root.describe()} does not require grad and was not produced by a recorded op`);
  if (!seed) {
    if (root.data.size !== 1)
      throw new ShapeError(`backward: a non-scalar root ${shapeStr(root.shape)} needs an explicit seed gradient`);
    seed = Tensor.full(root.shape, 1, { device: root.data.device });
  } else {
    seed = seed.clone();
  }
  const order = topo(root);
  // Gradients of non-leaf outputs live here until their node runs; leaves accumulate into .grad.
  const pending = new Map<Variable, Tensor>();
  const give = (v: Variable, g: Tensor): void => {
    if (v.node === null) {
      if (v.requiresGrad) v.accumulate(g);
      else g.dispose();
      return;
    }
    const cur = pending.get(v);
    if (!cur) pending.set(v, g);
    else {
      addInPlace(cur, g);
      g.dispose();
    }
  };
  give(root, seed);
  try {
    for (let n = order.length - 1; n >= 0; n--) {
      const node = order[n];
      const gOut = node.outputs.map((o) => pending.get(o) ?? null);
      if (gOut.every((g) => g === null)) continue;
      if (!node.backward) throw new Error(`backward: node ${node.op} was already freed; use retainGraph to call backward twice`);
      const t0 = profile.enabled ? performance.now() : 0;
      const gIn = node.backward(gOut);
      if (profile.enabled) profile.backward.set(node.scope, (profile.backward.get(node.scope) ?? 0) + performance.now() - t0);
      for (const o of node.outputs) {
        pending.get(o)?.dispose();
        pending.delete(o);
      }
      node.inputs.forEach((v, i) => {
        const g = gIn[i];
        if (!g) return;
        if (!v || !(v.requiresGrad || v.node)) g.dispose();
        else give(v, g);
      });
    }
  } finally {
    for (const g of pending.values()) g.dispose();
    if (!opts.retainGraph) releaseGraph(order, root);
  }
}

/** Frees a graph without back-propagating (e.g. after an evaluation forward that recorded by mistake). */
export function releaseGraph(order: TapeNode[] | Variable, keepValueOf?: Variable): void {
  if (!(order instanceof Variable) && !(Array.isArray(order) && order.every(isTapeNode)))
    throw new TypeError(`releaseGraph: order must be a Variable (the root of a graph) or an array of tape nodes, got ${showValue(order)}`);
  if (keepValueOf !== undefined && !(keepValueOf instanceof Variable))
    throw new TypeError(`releaseGraph: keepValueOf must be a Variable or undefined, got ${showValue(keepValueOf)}`);
  const nodes = order instanceof Variable ? topo(order) : order;
  const root = order instanceof Variable ? order : keepValueOf;
  for (const node of nodes) {
    for (const s of node.saved) s.dispose();
    node.saved = [];
    node.backward = null;
    for (const o of node.outputs) {
      o.zeroGrad();
      if (o !== root) o.data.dispose();
      o.node = null;
    }
  }
}

function isTapeNode(n: unknown): n is TapeNode {
  if (!isObject(n)) return false;
  const o = n as Record<string, unknown>;
  return Array.isArray(o.inputs) && Array.isArray(o.outputs) && Array.isArray(o.saved);
}

// ---- glue -------------------------------------------------------------------------------------------------

/**
 * a += b elementwise (gradient accumulation). This is glue, not a kernel: a single pass over host memory.
 * Device tensors need a native add, which the CUDA flavor does not export yet.
 */
export function addInPlace(a: Tensor, b: Tensor): void {
  if (a.size !== b.size || a.dtype !== b.dtype)
    throw new ShapeError(`autograd: cannot add ${b.dtype} ${shapeStr(b.shape)} into ${a.dtype} ${shapeStr(a.shape)}`);
  if (a.device !== 'cpu' || b.device !== 'cpu')
    throw new Error('autograd: gradient accumulation of device tensors is not supported yet (CPU only)');
  const x = a.data() as Float32Array;
  const y = b.data() as Float32Array;
  for (let i = 0; i < x.length; i++) x[i] += y[i];
}
