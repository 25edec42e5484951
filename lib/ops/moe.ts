/**
 * Mixture-of-Experts ops: routing for every gate kind and the expert block as grouped GEMMs, on the CPU; on CUDA
 * tensors moeRoute/moeRouteBackward, moeExperts/moeExpertsBackward and the primitives run the CUDA
 * kernels (native/kernels/cuda/moe_*.cu).
 *
 * Shape letters: T tokens, D model width, E experts, k slots per token, G expert width, S kept slots.
 *
 * A σ-MoE / Switch / top-k MoE layer is `moeRoute` on the selector logits followed by `moeExperts` on the
 * token rows; backward is `moeExpertsBackward` (gives dgates) followed by `moeRouteBackward` (gives dz,
 * including the regularisers). The pieces of `moeExperts` are public too: `moeExpertUp`, `moeExpertDown`,
 * `moeCombine`.
 *
 * @example
 * ```ts
 * // σ-MoE forward and backward for one layer (x [T, D], wS [D, E] selector, w1 [E, D, G], w2 [E, G, D]).
 * const z = matmul(x, wS);                                   // logits [T, E]
 * const r = moeRoute(z, { k: 4, gate: 'sigmoid', dropout: 0.05, seed: step });
 * const { y, saved } = moeExperts(x, r, { w1, w2 }, { act: 'relu' });
 * const loss = lmLoss + 0.001 * r.aux.entropy;
 * // ... dy = ∂loss/∂y from the rest of the network
 * const g = moeExpertsBackward(dy, x, r, { w1, w2 }, saved, { act: 'relu' }); // dx, dw1, dw2, dgates
 * const dz = moeRouteBackward(z, r, g.dgates, { entropy: 0.001 });          // then dz -> dx, dwS
 * r.dispose(); saved.pre.dispose(); saved.hs.dispose();
 * ```
 */
import { DeviceError, fail } from '../errors.js';
import type { NativeAct } from '../native/binding.js';
import { native } from '../native/loader.js';
import { expectTensor, sameDevice, Tensor } from '../tensor.js';

/** How the combine weights come from the logits z. */
export type MoeGate = 'sigmoid' | 'softmax' | 'softmax-renorm';
/** How experts are chosen per token. */
export type MoeSelect = 'topk' | 'adaptive' | 'threshold';
/** Activation inside the experts (and the dense FFN). GELU is the exact erf form. */
export type Activation = 'relu' | 'gelu' | 'silu';

export interface MoeRouteOptions {
  /** Slots per token: experts per token for top-k, the maximum for 'threshold', 2 for 'adaptive'. */
  k: number;
  /**
   * 'sigmoid' (σ-MoE, default): gate = σ(z_e). 'softmax': gate = softmax(z)_e over all E, not renormalised
   * (Switch). 'softmax-renorm': softmax over the chosen experts' logits (sums to 1 per token).
   */
  gate?: MoeGate;
  /**
   * 'topk' (default): the k largest logits, ties toward the lower index. 'adaptive' (Li et al. 2023): top-1, and
   * also the top-2 expert when p1 − p2 <= threshold with p = softmax(z). 'threshold' (XMoE): experts in order of
   * p = softmax(z) until their cumulative mass reaches threshold, at most k.
   */
  select?: MoeSelect;
  /** Probability gap for 'adaptive' (default 0.1) or cumulative mass for 'threshold' (default 0.9). */
  threshold?: number;
  /**
   * Expert dropout δ (σ-MoE §1.6, training only): each (token, expert) is masked with probability δ before
   * selection, without rescaling. Masked experts are never chosen; a token with fewer than k survivors gets
   * fewer slots (unused slots have id −1 and gate 0). Default 0.
   */
  dropout?: number;
  /** Seed of the dropout mask (deterministic for a given seed; use e.g. the step number). Default 0. */
  seed?: number;
  /** Switch capacity C = ceil(capacityFactor · T · k / E) slots per expert; overflow slots are dropped. */
  capacityFactor?: number;
  /** Explicit capacity per expert (overrides capacityFactor). Default: dropless. */
  capacity?: number;
  /** 'cpu' (default) or 'ref' (the scalar reference kernel, for tests). */
  impl?: 'cpu' | 'ref';
}

/** Auxiliary losses of one routing call (float64 values). */
export interface MoeAuxLosses {
  /** σ-MoE entropy regulariser Σ_e p̄_e log p̄_e with p̄ = mean over tokens of softmax(z) (methods.md §1.5). */
  entropy: number;
  /** Switch load-balancing loss E · Σ_e f_e · p̄_e, f_e = share of tokens whose first choice is e. */
  balance: number;
  /** Router z-loss mean_t (logsumexp_e z_t,e)². */
  zLoss: number;
}

/**
 * The result of `moeRoute`. Slot s = t·k + j is token t's j-th choice. Owns its tensors: call dispose() (or
 * create it inside tidy(), which collects them).
 */
export interface MoeRouting {
  readonly T: number;
  readonly E: number;
  readonly k: number;
  readonly gate: MoeGate;
  readonly select: MoeSelect;
  readonly threshold: number;
  readonly dropout: number;
  readonly seed: number;
  /** Capacity per expert, or −1 for dropless. */
  readonly capacity: number;
  /** [T, k] i32: chosen expert per slot before capacity, −1 for unused slots. */
  readonly choices: Tensor;
  /** [T, k] i32: expert computing each slot; −1 if unused or dropped by capacity. */
  readonly ids: Tensor;
  /** [T, k] f32: combine weights; 0 where ids is −1. */
  readonly gates: Tensor;
  /** [E] i32: kept slots per expert. */
  readonly counts: Tensor;
  /** [E + 1] i64: exclusive prefix sum of counts (offsets[E] = S). */
  readonly offsets: Tensor;
  /** [S] i32: kept slots sorted stably by expert (slot order within an expert); on cuda [T·k], −1 past offsets[E]. */
  readonly sortedSlots: Tensor;
  /** [T, k] i32: position of each slot in sortedSlots (its row in per-slot buffers), or −1. */
  readonly slotRank: Tensor;
  /** [E] i32: slots dropped by capacity per expert. */
  readonly dropped: Tensor;
  /** [T] i32: experts computing each token (kept slots; varies with adaptive/threshold routing, dropout, capacity). */
  readonly tokenCounts: Tensor;
  /** S, the number of kept slots (on cuda: T·k, the rows reserved for them; the kept count is offsets[E]). */
  readonly numSlots: number;
  /** Slots dropped by capacity, in total. */
  readonly numDropped: number;
  /** Auxiliary losses (values; their gradients come from moeRouteBackward). */
  readonly aux: MoeAuxLosses;
  /** Disposes every tensor of the routing. */
  dispose(): void;
}

function checkCpu(op: string, tensors: Record<string, Tensor | undefined>): void {
  const dev = sameDevice(op, tensors);
  if (dev !== 'cpu') throw new DeviceError(`${op}: this op runs on the cpu; got ${dev} tensors`);
}

function checkInt(op: string, name: string, v: unknown, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) fail('type', `${op}: ${name} must be an integer, got ${String(v)}`);
  if (v < lo || v > hi) fail('range', `${op}: ${name} must be in [${lo}, ${hi}], got ${v}`);
  return v;
}

function checkNum(op: string, name: string, v: unknown, lo: number, hi: number, hiOpen = false): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail('type', `${op}: ${name} must be a finite number, got ${String(v)}`);
  if (v < lo || v > hi || (hiOpen && v === hi))
    fail('range', `${op}: ${name} must be in [${lo}, ${hi}${hiOpen ? ')' : ']'}, got ${v}`);
  return v;
}

const GATES: readonly MoeGate[] = ['sigmoid', 'softmax', 'softmax-renorm'];
const SELECTS: readonly MoeSelect[] = ['topk', 'adaptive', 'threshold'];
const ACTS: readonly Activation[] = ['relu', 'gelu', 'silu'];

/** @internal Validates an activation name. */
export function checkAct(op: string, act: unknown): NativeAct {
  if (!ACTS.includes(act as Activation)) fail('range', `${op}: act must be one of ${ACTS.join(', ')}, got ${String(act)}`);
  return act as NativeAct;
}

/**
 * Routes T tokens to E experts from the logits `z` [T, E] (f32): gates, selection, optional expert dropout and
 * capacity, the stable per-expert sort of the kept slots, and the auxiliary losses. On a CUDA `z` the routing runs on
 * the device with every option (impl 'ref' excepted) and the same results: every tensor of the result lives on the
 * device, sized for the worst case — numSlots = T·k and sortedSlots [T·k] padded with −1 past offsets[E], the kept
 * count (the device expert ops handle that) — and `aux` / `numDropped` are copied back only when read.
 *
 * @example
 * ```ts
 * const r = moeRoute(z, { k: 1, gate: 'softmax', capacityFactor: 1.25 });   // Switch with token dropping
 * console.log(r.counts.toArray(), r.numDropped, r.aux.balance);
 * r.dispose();
 * ```
 */
export function moeRoute(z: Tensor, opts: MoeRouteOptions): MoeRouting {
  const op = 'moeRoute';
  expectTensor(z, op, 'z', 'f32');
  if (z.rank !== 2) fail('shape', `${op}: z must have shape [T, E], got [${z.shape.join(', ')}]`);
  if (!opts || typeof opts !== 'object') fail('type', `${op}: options must be an object with k`);
  const [T, E] = z.shape;
  if (E < 1) fail('shape', `${op}: z must have at least one expert column, got E=${E}`);
  const gate = opts.gate ?? 'sigmoid';
  const select = opts.select ?? 'topk';
  if (!GATES.includes(gate)) fail('range', `${op}: gate must be one of ${GATES.join(', ')}, got ${String(gate)}`);
  if (!SELECTS.includes(select)) fail('range', `${op}: select must be one of ${SELECTS.join(', ')}, got ${String(select)}`);
  if (typeof opts.k === 'number' && Number.isInteger(opts.k) && (opts.k < 1 || opts.k > E))
    fail('range', `${op}: k must be in [1, E=${E}], got ${opts.k}`);
  const k = checkInt(op, 'k', opts.k, 1, E);
  if (select === 'adaptive' && k !== 2) fail('range', `${op}: adaptive selection uses k = 2 slots, got k = ${k}`);
  const threshold = checkNum(op, 'threshold', opts.threshold ?? (select === 'threshold' ? 0.9 : 0.1), -1, 2);
  const dropout = checkNum(op, 'dropout', opts.dropout ?? 0, 0, 1, true);
  const seed = checkInt(op, 'seed', opts.seed ?? 0, 0, Number.MAX_SAFE_INTEGER);
  let capacity = -1;
  if (opts.capacity !== undefined) capacity = checkInt(op, 'capacity', opts.capacity, 0, 2 ** 31 - 1);
  else if (opts.capacityFactor !== undefined) {
    const cf = checkNum(op, 'capacityFactor', opts.capacityFactor, 0, 1e9);
    capacity = Math.ceil((cf * T * k) / E);
  }
  const impl = opts.impl ?? 'cpu';
  if (impl !== 'cpu' && impl !== 'ref') fail('range', `${op}: impl must be 'cpu' or 'ref', got ${String(impl)}`);
  if (z.device === 'cuda') {
    return routeOnDevice(z, { T, E, k, gate, select, threshold, dropout, seed, capacity, impl });
  }

  const TK = T * k;
  const choices = new Int32Array(TK);
  const ids = new Int32Array(TK);
  const gates = new Float32Array(TK);
  const counts = new Int32Array(E);
  const offsets = new BigInt64Array(E + 1);
  const sorted = new Int32Array(TK);
  const rank = new Int32Array(TK);
  const dropped = new Int32Array(E);
  const perToken = new Int32Array(T);
  const aux = native().moeRoute(
    T, E, k, gate, select, threshold, dropout, seed, capacity, impl === 'ref', z.nativeArg(op, 'z') as Float32Array,
    choices, ids, gates, counts, offsets, sorted, rank, dropped, perToken,
  );
  const S = Number(offsets[E]);
  let numDropped = 0;
  for (let e = 0; e < E; e++) numDropped += dropped[e];
  const tensors = {
    choices: Tensor.fromHost(choices, [T, k]),
    ids: Tensor.fromHost(ids, [T, k]),
    gates: Tensor.fromHost(gates, [T, k]),
    counts: Tensor.fromHost(counts, [E]),
    offsets: Tensor.fromHost(offsets, [E + 1]),
    sortedSlots: Tensor.fromHost(sorted.slice(0, S), [S]),
    slotRank: Tensor.fromHost(rank, [T, k]),
    dropped: Tensor.fromHost(dropped, [E]),
    tokenCounts: Tensor.fromHost(perToken, [T]),
  };
  return {
    T, E, k, gate, select, threshold, dropout, seed, capacity,
    ...tensors,
    numSlots: S,
    numDropped,
    aux: { entropy: aux.entropy, balance: aux.balance, zLoss: aux.zloss },
    dispose() {
      for (const t of Object.values(tensors)) t.dispose();
    },
  };
}

interface RouteConfig {
  T: number;
  E: number;
  k: number;
  gate: MoeGate;
  select: MoeSelect;
  threshold: number;
  dropout: number;
  seed: number;
  capacity: number;
  impl: 'cpu' | 'ref';
}

/** The CUDA routing covers every option but the scalar reference. */
function checkDeviceRoute(op: string, c: Pick<RouteConfig, 'impl'>): void {
  if (c.impl === 'ref') throw new DeviceError(`${op}: impl 'ref' runs on the cpu; got cuda tensors`);
}

// CUDA routing: every tensor on the device, sized for the worst case S = T·k so that the host never waits for the
// counts: numSlots is T·k (the rows of every per-slot buffer), sortedSlots has T·k entries padded with -1 past the
// kept count offsets[E] (equal to T·k for dropless top-k without dropout). The auxiliary losses and numDropped
// stay on the device until they are read.
function routeOnDevice(z: Tensor, c: RouteConfig): MoeRouting {
  const op = 'moeRoute';
  checkDeviceRoute(op, c);
  const { T, E, k } = c;
  const dev = (shape: number[], dtype: 'f32' | 'i32' | 'i64') => Tensor.zeros(shape, { device: 'cuda', dtype });
  const tensors = {
    choices: dev([T, k], 'i32'),
    ids: dev([T, k], 'i32'),
    gates: dev([T, k], 'f32'),
    counts: dev([E], 'i32'),
    offsets: dev([E + 1], 'i64'),
    sortedSlots: dev([T * k], 'i32'),
    slotRank: dev([T, k], 'i32'),
    dropped: dev([E], 'i32'),
    tokenCounts: dev([T], 'i32'),
  };
  const auxBits = dev([3], 'i64'); // {entropy, balance, zloss} as f64 bit patterns
  const a = (t: Tensor, name: string) => t.nativeArg(op, name) as never;
  try {
    native().moeRoute(
      T, E, k, c.gate, c.select, c.threshold, c.dropout, c.seed, c.capacity, false, a(z, 'z'), a(tensors.choices, 'choices'),
      a(tensors.ids, 'ids'), a(tensors.gates, 'gates'), a(tensors.counts, 'counts'), a(tensors.offsets, 'offsets'),
      a(tensors.sortedSlots, 'sortedSlots'), a(tensors.slotRank, 'slotRank'), a(tensors.dropped, 'dropped'),
      a(tensors.tokenCounts, 'tokenCounts'), a(auxBits, 'aux'),
    );
  } catch (err) {
    for (const t of [...Object.values(tensors), auxBits]) t.dispose();
    throw err;
  }
  let aux: MoeAuxLosses | undefined;
  let numDropped: number | undefined;
  return {
    T, E, k, gate: c.gate, select: c.select, threshold: c.threshold, dropout: c.dropout, seed: c.seed, capacity: c.capacity,
    ...tensors,
    numSlots: T * k,
    get numDropped(): number {
      if (numDropped === undefined) numDropped = (tensors.dropped.data() as Int32Array).reduce((a, b) => a + b, 0);
      return numDropped;
    },
    get aux(): MoeAuxLosses {
      if (!aux) {
        const b = auxBits.data() as BigInt64Array;
        const f = new Float64Array(b.buffer, b.byteOffset, 3);
        aux = { entropy: f[0], balance: f[1], zLoss: f[2] };
      }
      return aux;
    },
    dispose() {
      for (const t of Object.values(tensors)) t.dispose();
      auxBits.dispose();
    },
  };
}

/** Upstream gradients of the auxiliary losses (their coefficients in the total loss). */
export interface MoeAuxWeights {
  /** ∂L/∂entropy (σ-MoE γ). Default 0. */
  entropy?: number;
  /** ∂L/∂balance (Switch α). Default 0. */
  balance?: number;
  /** ∂L/∂zLoss. Default 0. */
  zLoss?: number;
  /** 'cpu' (default) or 'ref'. */
  impl?: 'cpu' | 'ref';
}

function checkRouting(op: string, r: MoeRouting): void {
  if (!r || typeof r !== 'object' || !(r.gates instanceof Tensor))
    fail('type', `${op}: routing must be the result of moeRoute`);
  for (const name of ['choices', 'ids', 'gates', 'offsets', 'sortedSlots', 'slotRank'] as const)
    expectTensor(r[name], op, `routing.${name}`);
}

/**
 * Gradient of the routing with respect to the logits: dz [T, E] from the gate gradients `dgates` [T, k] (only
 * kept slots carry gradient; the choice itself is a constant) plus the weighted regularisers' exact gradients.
 * `dgates` may be null (only the regularisers).
 *
 * @example
 * ```ts
 * const dz = moeRouteBackward(z, r, g.dgates, { entropy: 0.001 });
 * ```
 */
export function moeRouteBackward(z: Tensor, r: MoeRouting, dgates: Tensor | null, w: MoeAuxWeights = {}): Tensor {
  const op = 'moeRouteBackward';
  expectTensor(z, op, 'z', 'f32');
  checkRouting(op, r);
  expectTensor(z, op, 'z', 'f32', [r.T, r.E]);
  if (dgates !== null) expectTensor(dgates, op, 'dgates', 'f32', [r.T, r.k]);
  const device = sameDevice(op, { z, dgates: dgates ?? undefined, choices: r.choices, ids: r.ids });
  const we = checkNum(op, 'entropy weight', w.entropy ?? 0, -1e30, 1e30);
  const wb = checkNum(op, 'balance weight', w.balance ?? 0, -1e30, 1e30);
  const wz = checkNum(op, 'zLoss weight', w.zLoss ?? 0, -1e30, 1e30);
  if (device === 'cuda') {
    checkDeviceRoute(op, { ...r, impl: w.impl ?? 'cpu' });
    const dz = Tensor.zeros([r.T, r.E], { device: 'cuda' });
    const dg = dgates ?? Tensor.zeros([r.T, r.k], { device: 'cuda' });
    const a = (t: Tensor, name: string) => t.nativeArg(op, name) as never;
    try {
      native().moeRouteBackward(
        r.T, r.E, r.k, r.gate, r.select, r.threshold, r.dropout, r.seed, r.capacity, false, a(z, 'z'),
        a(r.choices, 'routing.choices'), a(r.ids, 'routing.ids'), a(dg, 'dgates'), we, wb, wz, a(dz, 'dz'),
      );
    } catch (err) {
      dz.dispose();
      throw err;
    } finally {
      if (dg !== dgates) dg.dispose();
    }
    return dz;
  }
  const dz = new Float32Array(r.T * r.E);
  native().moeRouteBackward(
    r.T, r.E, r.k, r.gate, r.select, r.threshold, r.dropout, r.seed, r.capacity, w.impl === 'ref',
    z.nativeArg(op, 'z') as Float32Array, r.choices.nativeArg(op, 'routing.choices') as Int32Array,
    r.ids.nativeArg(op, 'routing.ids') as Int32Array,
    dgates ? (dgates.nativeArg(op, 'dgates') as Float32Array) : new Float32Array(r.T * r.k), we, wb, wz, dz,
  );
  return Tensor.fromHost(dz, [r.T, r.E]);
}

/** Expert weights: w1 [E, D, G], w2 [E, G, D], optional b1 [E, G] and b2 [D]. */
export interface MoeExpertParams {
  w1: Tensor;
  w2: Tensor;
  b1?: Tensor;
  b2?: Tensor;
}

/** What moeExperts saves for backward: pre-activations and gate-scaled activations, both [S, G] in rank order. */
export interface MoeExpertsSaved {
  pre: Tensor;
  hs: Tensor;
}

export interface MoeExpertsOptions {
  /** Expert activation, default 'relu'. */
  act?: Activation;
  /** 'cpu' (default) or 'ref' (the scalar reference). */
  impl?: 'cpu' | 'ref';
}

interface Dims {
  T: number;
  D: number;
  E: number;
  k: number;
  G: number;
}

function expertDims(op: string, x: Tensor, r: MoeRouting, p: MoeExpertParams, cudaOk = false): Dims {
  expectTensor(x, op, 'x', 'f32');
  if (x.rank !== 2) fail('shape', `${op}: x must have shape [T, D], got [${x.shape.join(', ')}]`);
  checkRouting(op, r);
  const [T, D] = x.shape;
  if (T !== r.T) fail('shape', `${op}: x has T=${T} rows but the routing has T=${r.T}`);
  if (!p || typeof p !== 'object') fail('type', `${op}: params must be { w1, w2, b1?, b2? }`);
  expectTensor(p.w1, op, 'w1', 'f32');
  if (p.w1.rank !== 3) fail('shape', `${op}: w1 must have shape [E, D, G], got [${p.w1.shape.join(', ')}]`);
  const G = p.w1.shape[2];
  expectTensor(p.w1, op, 'w1', 'f32', [r.E, D, G]);
  expectTensor(p.w2, op, 'w2', 'f32', [r.E, G, D]);
  if (p.b1 !== undefined) expectTensor(p.b1, op, 'b1', 'f32', [r.E, G]);
  if (p.b2 !== undefined) expectTensor(p.b2, op, 'b2', 'f32', [D]);
  if (G < 1 || D < 1) fail('shape', `${op}: D and G must be >= 1, got D=${D}, G=${G}`);
  if (!cudaOk) checkCpu(op, { x, w1: p.w1, w2: p.w2, b1: p.b1, b2: p.b2, gates: r.gates });
  else {
    // The CUDA expert block: x and the parameters on one device; the routing on the host (any device for x), or
    // on cuda (moeRoute on a cuda z) together with x.
    const dev = sameDevice(op, { x, w1: p.w1, w2: p.w2, b1: p.b1, b2: p.b2 });
    const rdev = sameDevice(op, { 'routing.gates': r.gates, 'routing.offsets': r.offsets,
      'routing.sortedSlots': r.sortedSlots, 'routing.slotRank': r.slotRank });
    if (rdev === 'cuda' && dev !== 'cuda')
      throw new DeviceError(`${op}: the routing is on cuda but x and the parameters are on ${dev}`);
  }
  return { T, D, E: r.E, k: r.k, G };
}

function routeArgs(op: string, r: MoeRouting) {
  return [
    r.gates.nativeArg(op, 'routing.gates') as Float32Array,
    r.offsets.nativeArg(op, 'routing.offsets') as BigInt64Array,
    r.sortedSlots.nativeArg(op, 'routing.sortedSlots') as Int32Array,
    r.slotRank.nativeArg(op, 'routing.slotRank') as Int32Array,
  ] as const;
}

const f32 = (t: Tensor | undefined, op: string, name: string) => (t ? (t.nativeArg(op, name) as Float32Array) : null);

// The MoE primitives: tensors on one device; a cuda routing needs cuda tensors (a host routing goes with either).
function primitiveDevice(op: string, tensors: Record<string, Tensor | undefined>, r: MoeRouting): 'cpu' | 'cuda' {
  const dev = sameDevice(op, tensors);
  const rdev = sameDevice(op, { 'routing.gates': r.gates, 'routing.offsets': r.offsets,
    'routing.sortedSlots': r.sortedSlots, 'routing.slotRank': r.slotRank });
  if (rdev === 'cuda' && dev !== 'cuda') throw new DeviceError(`${op}: the routing is on cuda but the tensors are on ${dev}`);
  return dev;
}
const dev = (t: Tensor | undefined, op: string, name: string) => (t ? t.nativeArg(op, name) : null) as never;

/**
 * The expert block of an MoE layer: y[t] = Σ_j gate[t,j] · act(x[t]·W1[e] + b1[e])·W2[e] (+ b2) over token t's
 * kept slots, computed as grouped GEMMs over the sorted slot list (token rows gathered inside the GEMM), with a
 * fixed-order k-sum. Returns y [T, D] and the tensors backward needs.
 *
 * @example
 * ```ts
 * const { y, saved } = moeExperts(x, routing, { w1, w2 }, { act: 'relu' });
 * ```
 */
export function moeExperts(
  x: Tensor,
  r: MoeRouting,
  p: MoeExpertParams,
  opts: MoeExpertsOptions = {},
): { y: Tensor; saved: MoeExpertsSaved } {
  const op = 'moeExperts';
  const { T, D, E, k, G } = expertDims(op, x, r, p, opts.impl !== 'ref');
  const act = checkAct(op, opts.act ?? 'relu');
  const S = r.numSlots;
  if (x.device === 'cuda') {
    // CUDA: outputs on the device; the routing (host) is uploaded by the native call.
    const yd = Tensor.zeros([T, D], { device: 'cuda' });
    const pred = Tensor.zeros([S, G], { device: 'cuda' });
    const hsd = Tensor.zeros([S, G], { device: 'cuda' });
    const arg = (t: Tensor | undefined, name: string) => (t ? t.nativeArg(op, name) : null);
    native().moeExperts(
      T, D, E, k, G, act, false, ...routeArgs(op, r), arg(x, 'x') as never, arg(p.w1, 'w1') as never,
      arg(p.b1, 'b1') as never, arg(p.w2, 'w2') as never, arg(p.b2, 'b2') as never, arg(pred, 'pre') as never,
      arg(hsd, 'hs') as never, arg(yd, 'y') as never,
    );
    return { y: yd, saved: { pre: pred, hs: hsd } };
  }
  const pre = new Float32Array(S * G);
  const hs = new Float32Array(S * G);
  const y = new Float32Array(T * D);
  native().moeExperts(
    T, D, E, k, G, act, opts.impl === 'ref', ...routeArgs(op, r), x.nativeArg(op, 'x') as Float32Array,
    f32(p.w1, op, 'w1')!, f32(p.b1, op, 'b1'), f32(p.w2, op, 'w2')!, f32(p.b2, op, 'b2'), pre, hs, y,
  );
  return {
    y: Tensor.fromHost(y, [T, D]),
    saved: { pre: Tensor.fromHost(pre, [S, G]), hs: Tensor.fromHost(hs, [S, G]) },
  };
}

/** Gradients of moeExperts. */
export interface MoeExpertsGrads {
  dx: Tensor;
  dw1: Tensor;
  dw2: Tensor;
  /** Present when params.b1 was given. */
  db1?: Tensor;
  /** Present when params.b2 was given. */
  db2?: Tensor;
  /** [T, k] ∂L/∂gate per slot (0 for slots that were not kept); feed to moeRouteBackward. */
  dgates: Tensor;
}

/**
 * Backward of moeExperts from dy [T, D]: dx, dW1, dW2 (experts with no tokens get 0), bias gradients and the
 * gate gradients. Deterministic (each dW tile has one owner; no atomics).
 */
export function moeExpertsBackward(
  dy: Tensor,
  x: Tensor,
  r: MoeRouting,
  p: MoeExpertParams,
  saved: MoeExpertsSaved,
  opts: MoeExpertsOptions = {},
): MoeExpertsGrads {
  const op = 'moeExpertsBackward';
  const { T, D, E, k, G } = expertDims(op, x, r, p, opts.impl !== 'ref');
  const act = checkAct(op, opts.act ?? 'relu');
  expectTensor(dy, op, 'dy', 'f32', [T, D]);
  if (!saved || typeof saved !== 'object') fail('type', `${op}: saved must be the saved tensors of moeExperts`);
  expectTensor(saved.pre, op, 'saved.pre', 'f32', [r.numSlots, G]);
  expectTensor(saved.hs, op, 'saved.hs', 'f32', [r.numSlots, G]);
  if (sameDevice(op, { dy, x, pre: saved.pre, hs: saved.hs }) === 'cuda') {
    // CUDA: gradients on the device; dgates next to the routing it feeds (moeRouteBackward).
    const zeros = (shape: number[]) => Tensor.zeros(shape, { device: 'cuda' });
    // dgates lives with the routing: on the device for a cuda routing, else on the host.
    const dgates = Tensor.zeros([T, k], { device: r.gates.device });
    const g: MoeExpertsGrads = { dx: zeros([T, D]), dw1: zeros([E, D, G]), dw2: zeros([E, G, D]), dgates };
    if (p.b1) g.db1 = zeros([E, G]);
    if (p.b2) g.db2 = zeros([D]);
    const arg = (t: Tensor | undefined, name: string) => (t ? t.nativeArg(op, name) : null) as never;
    native().moeExpertsBackward(
      T, D, E, k, G, act, false, ...routeArgs(op, r), arg(x, 'x'), arg(p.w1, 'w1'), arg(p.w2, 'w2'),
      arg(saved.pre, 'saved.pre'), arg(saved.hs, 'saved.hs'), arg(dy, 'dy'), arg(g.dx, 'dx'), arg(g.dw1, 'dw1'),
      arg(g.db1, 'db1'), arg(g.dw2, 'dw2'), arg(g.db2, 'db2'), arg(g.dgates, 'dgates'),
    );
    return g;
  }
  checkCpu(op, { dy, x, pre: saved.pre });
  const dx = new Float32Array(T * D);
  const dw1 = new Float32Array(E * D * G);
  const dw2 = new Float32Array(E * G * D);
  const db1 = p.b1 ? new Float32Array(E * G) : null;
  const db2 = p.b2 ? new Float32Array(D) : null;
  const dgates = new Float32Array(T * k);
  native().moeExpertsBackward(
    T, D, E, k, G, act, opts.impl === 'ref', ...routeArgs(op, r), x.nativeArg(op, 'x') as Float32Array,
    f32(p.w1, op, 'w1')!, f32(p.w2, op, 'w2')!, f32(saved.pre, op, 'saved.pre')!, f32(saved.hs, op, 'saved.hs')!,
    dy.nativeArg(op, 'dy') as Float32Array, dx, dw1, db1, dw2, db2, dgates, true, // fresh, zeroed dW arrays
  );
  const out: MoeExpertsGrads = {
    dx: Tensor.fromHost(dx, [T, D]),
    dw1: Tensor.fromHost(dw1, [E, D, G]),
    dw2: Tensor.fromHost(dw2, [E, G, D]),
    dgates: Tensor.fromHost(dgates, [T, k]),
  };
  if (db1) out.db1 = Tensor.fromHost(db1, [E, G]);
  if (db2) out.db2 = Tensor.fromHost(db2, [D]);
  return out;
}

/**
 * Grouped up-projection primitive: pre [S, G] = x[token(r)]·W1[e] (+ b1[e]) per kept slot in rank order, and
 * hs = gate·act(pre) in the epilogue.
 */
export function moeExpertUp(
  x: Tensor,
  w1: Tensor,
  r: MoeRouting,
  opts: { b1?: Tensor; act?: Activation } = {},
): { pre: Tensor; hs: Tensor } {
  const op = 'moeExpertUp';
  expectTensor(w1, op, 'w1', 'f32');
  if (w1.rank !== 3) fail('shape', `${op}: w1 must have shape [E, D, G], got [${w1.shape.join(', ')}]`);
  const G = w1.shape[2];
  checkRouting(op, r);
  expectTensor(x, op, 'x', 'f32', [r.T, -1]);
  const D = x.shape[1];
  expectTensor(w1, op, 'w1', 'f32', [r.E, D, G]);
  if (opts.b1 !== undefined) expectTensor(opts.b1, op, 'b1', 'f32', [r.E, G]);
  const device = primitiveDevice(op, { x, w1, b1: opts.b1 }, r);
  const act = checkAct(op, opts.act ?? 'relu');
  const S = r.numSlots;
  if (device === 'cuda') {
    const [pred, hsd] = [Tensor.zeros([S, G], { device }), Tensor.zeros([S, G], { device })];
    native().moeExpertUp(
      r.T, D, r.E, r.k, G, act, ...routeArgs(op, r), dev(x, op, 'x'), dev(w1, op, 'w1'), dev(opts.b1, op, 'b1'),
      dev(pred, op, 'pre'), dev(hsd, op, 'hs'),
    );
    return { pre: pred, hs: hsd };
  }
  const pre = new Float32Array(S * G);
  const hs = new Float32Array(S * G);
  native().moeExpertUp(
    r.T, D, r.E, r.k, G, act, ...routeArgs(op, r), x.nativeArg(op, 'x') as Float32Array, f32(w1, op, 'w1')!,
    f32(opts.b1, op, 'b1'), pre, hs,
  );
  return { pre: Tensor.fromHost(pre, [S, G]), hs: Tensor.fromHost(hs, [S, G]) };
}

/** Grouped down-projection primitive: yr [S, D] = hs[r]·W2[e] per kept slot in rank order. */
export function moeExpertDown(hs: Tensor, w2: Tensor, r: MoeRouting): Tensor {
  const op = 'moeExpertDown';
  checkRouting(op, r);
  expectTensor(w2, op, 'w2', 'f32');
  if (w2.rank !== 3) fail('shape', `${op}: w2 must have shape [E, G, D], got [${w2.shape.join(', ')}]`);
  const [, G, D] = w2.shape;
  expectTensor(w2, op, 'w2', 'f32', [r.E, G, D]);
  expectTensor(hs, op, 'hs', 'f32', [r.numSlots, G]);
  if (primitiveDevice(op, { hs, w2 }, r) === 'cuda') {
    const yrd = Tensor.zeros([r.numSlots, D], { device: 'cuda' });
    native().moeExpertDown(r.T, D, r.E, r.k, G, 'relu', ...routeArgs(op, r), dev(hs, op, 'hs'), dev(w2, op, 'w2'), dev(yrd, op, 'yr'));
    return yrd;
  }
  const yr = new Float32Array(r.numSlots * D);
  native().moeExpertDown(r.T, D, r.E, r.k, G, 'relu', ...routeArgs(op, r), f32(hs, op, 'hs')!, f32(w2, op, 'w2')!, yr);
  return Tensor.fromHost(yr, [r.numSlots, D]);
}

/** Combine primitive: y[t] = Σ_j yr[rank(t, j)] (+ b2), summed in slot order j = 0..k-1. */
export function moeCombine(yr: Tensor, r: MoeRouting, opts: { b2?: Tensor } = {}): Tensor {
  const op = 'moeCombine';
  checkRouting(op, r);
  expectTensor(yr, op, 'yr', 'f32');
  if (yr.rank !== 2) fail('shape', `${op}: yr must have shape [S, D], got [${yr.shape.join(', ')}]`);
  const D = yr.shape[1];
  expectTensor(yr, op, 'yr', 'f32', [r.numSlots, D]);
  if (opts.b2 !== undefined) expectTensor(opts.b2, op, 'b2', 'f32', [D]);
  if (primitiveDevice(op, { yr, b2: opts.b2 }, r) === 'cuda') {
    const yd = Tensor.zeros([r.T, D], { device: 'cuda' });
    native().moeCombine(r.T, D, r.E, r.k, 1, 'relu', ...routeArgs(op, r), dev(yr, op, 'yr'), dev(opts.b2, op, 'b2'), dev(yd, op, 'y'));
    return yd;
  }
  const y = new Float32Array(r.T * D);
  native().moeCombine(r.T, D, r.E, r.k, 1, 'relu', ...routeArgs(op, r), f32(yr, op, 'yr')!, f32(opts.b2, op, 'b2'), y);
  return Tensor.fromHost(y, [r.T, D]);
}
