/**
 * The native surface, described once. The CPU build (binding.gyp) and the CUDA flavor (CMakeLists.txt)
 * export the same functions; the CUDA flavor additionally accepts DeviceBuffer arguments and exports the
 * device-memory functions. lib/ never calls the addon except through this interface.
 *
 * Conventions: functions are synchronous, write into caller-provided output arrays, and take dims as plain
 * numbers. Host arrays are borrowed for the duration of the call only.
 */

export type NativeDType = 'f32' | 'i32' | 'i64' | 'bf16' | 'u8';

/** Host storage as native code sees it. */
export type HostArray = Float32Array | Int32Array | BigInt64Array | Uint16Array | Uint8Array;

/** Device memory owned by the CUDA flavor (an ObjectWrap); freed by dispose(), idempotently. */
export interface NativeDeviceBuffer {
  readonly byteLength: number;
  readonly dtype: NativeDType;
  readonly count: number;
  readonly disposed: boolean;
  dispose(): void;
}

/** Either a host array or a device buffer; ops run where their arguments live. */
export type NativeArray = HostArray | NativeDeviceBuffer;

export interface CudaDeviceInfo {
  name: string;
  computeCapability: string;
  totalMemory: number;
  multiprocessors?: number;
  clockKHz?: number;
}

export interface ProbeResult {
  ok: boolean;
  flavor: 'cpu' | 'cuda';
  error?: string;
  deviceCount?: number;
  driverVersion?: number;
  runtimeVersion?: number;
  devices?: CudaDeviceInfo[];
  archs?: string;
}

export interface NativeInfo {
  flavor: 'cpu' | 'cuda';
  cpuFeatures: Record<string, boolean>;
  isa: 'scalar' | 'avx2' | 'avx512';
  bestIsa: 'scalar' | 'avx2' | 'avx512';
  threads: number;
  physicalCores: number;
  napiVersion: number;
  compiler: string;
}

// ---- core ------------------------------------------------------------------------------------------------
export interface CoreBinding {
  setErrorClasses(classes: Record<string, unknown>): void;
  info(): NativeInfo;
  probe(): ProbeResult;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  setIsa(isa: 'scalar' | 'avx2' | 'avx512'): void;
  /** Bytes to skip from the start of `buffer` so that the rest is aligned to `align` (a power of two <= 4096). */
  alignOffset(buffer: ArrayBuffer, align: number): number;
}

// ---- device memory (CUDA flavor only) --------------------------------------------------------------------
export interface DeviceBinding {
  deviceAlloc?(count: number, dtype: NativeDType): NativeDeviceBuffer;
  copyToDevice?(dst: NativeDeviceBuffer, src: HostArray): void;
  copyToHost?(dst: HostArray, src: NativeDeviceBuffer): void;
  copyDeviceToDevice?(dst: NativeDeviceBuffer, src: NativeDeviceBuffer): void;
  deviceFill?(dst: NativeDeviceBuffer, value: number): void;
  deviceSynchronize?(): void;
  deviceMemory?(): { allocatedBytes: number; liveBuffers: number };
  /** C = alpha·op(A)·op(B) + beta·C on device buffers (f32 SIMT); conventions of native/include/sffn/gemm.h. */
  cudaGemmF32?(
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: NativeDeviceBuffer,
    lda: number,
    B: NativeDeviceBuffer,
    ldb: number,
    beta: number,
    C: NativeDeviceBuffer,
    ldc: number,
    batch?: number,
    strideA?: number,
    strideB?: number,
    strideC?: number,
  ): void;
  /** The same with bf16 A and B (tensor cores, f32 accumulate) and an f32 C. */
  cudaGemmBf16?(
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: NativeDeviceBuffer,
    lda: number,
    B: NativeDeviceBuffer,
    ldb: number,
    beta: number,
    C: NativeDeviceBuffer,
    ldc: number,
    batch?: number,
    strideA?: number,
    strideB?: number,
    strideC?: number,
  ): void;
  /** Per-run milliseconds (CUDA events) of `iters` M×N×K GEMMs after `warmup` untimed ones. */
  cudaBenchGemm?(dtype: 'f32' | 'bf16', M: number, N: number, K: number, warmup: number, iters: number): Float32Array;
  /** Measured TFLOP/s of a register-only FMA (f32) or mma.sync (bf16) loop over every SM. */
  cudaPeakTflops?(dtype: 'f32' | 'bf16'): number;
}

// ---- GEMM (issue: foundation) ----------------------------------------------------------------------------
/** Blocking of the active ISA's GEMM: register tile mr×nr, cache blocks kc (reduction), mc (rows), nc (columns). */
export interface GemmBlockingInfo {
  isa: 'scalar' | 'avx2' | 'avx512';
  mr: number;
  nr: number;
  kc: number;
  mc: number;
  nc: number;
}

export interface GemmBinding {
  /**
   * C = alpha·op(A)·op(B) + beta·C, f32, row-major, over `batch` matrices (matrix b at b·stride* elements).
   * op(A) is M×K (A stored K×M with row stride lda when transA), op(B) is K×N (stored N×K when transB).
   * beta = 0: C is write-only. Every touched element must lie inside its array; C must not overlap A or B.
   */
  gemm(
    transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number,
    A: NativeArray, lda: number, B: NativeArray, ldb: number, beta: number, C: NativeArray, ldc: number,
    batch: number, strideA: number, strideB: number, strideC: number,
  ): void;
  /** The gemm contract with bf16 A and B (Uint16Array bit patterns / bf16 DeviceBuffers), f32 accumulate and C. */
  gemmBf16(
    transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number,
    A: NativeArray, lda: number, B: NativeArray, ldb: number, beta: number, C: NativeArray, ldc: number,
    batch: number, strideA: number, strideB: number, strideC: number,
  ): void;
  /** The same contract through the float64-accumulating reference (kernels/ref/gemm.cpp), single thread. */
  gemmRef(
    transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number,
    A: NativeArray, lda: number, B: NativeArray, ldb: number, beta: number, C: NativeArray, ldc: number,
    batch: number, strideA: number, strideB: number, strideC: number,
  ): void;
  /**
   * The gathered GEMM sffn::gemm_f32_rows on the calling thread, rows given as element offsets:
   * A(i,k) = A[aRows[i] + k] (aRows has M entries) or A[aRows[k] + i] when aTrans (K entries);
   * B(k,j) = B[bRows[k] + j] (K entries) or B[bRows[j] + k] when bTrans (N entries); C row i at cRows[i].
   */
  gemmRows(
    aTrans: boolean, bTrans: boolean, M: number, N: number, K: number, alpha: number,
    A: Float32Array, aRows: Int32Array, B: Float32Array, bRows: Int32Array, beta: number, C: Float32Array,
    cRows: Int32Array,
  ): void;
  gemmBlocking(): GemmBlockingInfo;
  /** Measured GFLOP/s of independent FMA chains in registers on `threads` pool threads. */
  fmaPeak(isa: 'scalar' | 'avx2' | 'avx512', threads: number, iterations: number): number;
}

// ---- MoE (issue: MoE kernels) ----------------------------------------------------------------------------
export type NativeMoeGate = 'sigmoid' | 'softmax' | 'softmax-renorm';
export type NativeMoeSelect = 'topk' | 'adaptive' | 'threshold';
export type NativeAct = 'relu' | 'gelu' | 'silu';
export interface MoeBinding {
  /** Routing forward; writes every output array and returns the auxiliary losses. */
  moeRoute(
    T: number, E: number, k: number, gate: NativeMoeGate, select: NativeMoeSelect, threshold: number, dropout: number,
    seed: number, capacity: number, ref: boolean, z: Float32Array, choices: Int32Array, ids: Int32Array,
    gates: Float32Array, counts: Int32Array, offsets: BigInt64Array, sortedSlots: Int32Array, slotRank: Int32Array,
    dropped: Int32Array, tokenCounts?: Int32Array | null, aux?: BigInt64Array | null,
  ): { entropy: number; balance: number; zloss: number };
  moeRouteBackward(
    T: number, E: number, k: number, gate: NativeMoeGate, select: NativeMoeSelect, threshold: number, dropout: number,
    seed: number, capacity: number, ref: boolean, z: Float32Array, choices: Int32Array, ids: Int32Array,
    dgates: Float32Array, entropyWeight: number, balanceWeight: number, zLossWeight: number, dz: Float32Array,
  ): void;
  moeExperts(
    T: number, D: number, E: number, k: number, G: number, act: NativeAct, ref: boolean, gates: Float32Array,
    offsets: BigInt64Array, sortedSlots: Int32Array, slotRank: Int32Array, x: Float32Array, w1: Float32Array,
    b1: Float32Array | null, w2: Float32Array, b2: Float32Array | null, pre: Float32Array, hs: Float32Array,
    y: Float32Array,
  ): void;
  moeExpertsBackward(
    T: number, D: number, E: number, k: number, G: number, act: NativeAct, ref: boolean, gates: Float32Array,
    offsets: BigInt64Array, sortedSlots: Int32Array, slotRank: Int32Array, x: Float32Array, w1: Float32Array,
    w2: Float32Array, pre: Float32Array, hs: Float32Array, dy: Float32Array, dx: Float32Array, dw1: Float32Array,
    db1: Float32Array | null, dw2: Float32Array, db2: Float32Array | null, dgates: Float32Array, dwZeroed?: boolean,
  ): void;
  moeExpertUp(
    T: number, D: number, E: number, k: number, G: number, act: NativeAct, gates: Float32Array, offsets: BigInt64Array,
    sortedSlots: Int32Array, slotRank: Int32Array, x: Float32Array, w1: Float32Array, b1: Float32Array | null,
    pre: Float32Array, hs: Float32Array | null,
  ): void;
  moeExpertDown(
    T: number, D: number, E: number, k: number, G: number, act: NativeAct, gates: Float32Array, offsets: BigInt64Array,
    sortedSlots: Int32Array, slotRank: Int32Array, hs: Float32Array, w2: Float32Array, yr: Float32Array,
  ): void;
  moeCombine(
    T: number, D: number, E: number, k: number, G: number, act: NativeAct, gates: Float32Array, offsets: BigInt64Array,
    sortedSlots: Int32Array, slotRank: Int32Array, yr: Float32Array, b2: Float32Array | null, y: Float32Array,
  ): void;
  ffnDense(
    T: number, D: number, F: number, act: NativeAct, topk: number, ref: boolean, x: Float32Array, w1: Float32Array,
    b1: Float32Array | null, w2: Float32Array, b2: Float32Array | null, pre: Float32Array, h: Float32Array,
    y: Float32Array,
  ): void;
  ffnDenseBackward(
    T: number, D: number, F: number, act: NativeAct, topk: number, ref: boolean, x: Float32Array, w1: Float32Array,
    w2: Float32Array, pre: Float32Array, h: Float32Array, dy: Float32Array, dx: Float32Array, dw1: Float32Array,
    db1: Float32Array | null, dw2: Float32Array, db2: Float32Array | null,
  ): void;
}

// ---- PKM / PEER (issue: PKM and PEER) --------------------------------------------------------------------
/**
 * Sparse row gradient as returned by the backward kernels: the first `count` entries of `rows` are the unique
 * rows ascending, the first count·D of `values` their gradients; the arrays are the caller's out arrays when
 * given and large enough, else fresh ones (with headroom when out arrays were given).
 */
export interface NativeSparseRows {
  count: number;
  rows: Int32Array;
  values: Float32Array;
}

/** peerExpertsBackward's sparse result on the host. */
export interface NativeSparsePair {
  count: number;
  rows: Int32Array;
  dU: Float32Array;
  dV: Float32Array;
}

export interface PkmBinding {
  /** act: 0 none, 1 softmax (per head), 2 softmax over all heads, 3 relu, 4 sigmoid. */
  pkmTopk(
    q: NativeArray, keys: NativeArray, idx: NativeArray, scores: NativeArray, weights: NativeArray,
    T: number, H: number, Hq: number, Hk: number, Dk: number, n: number, k: number, act: number, ref?: boolean,
  ): void;
  pkmTopkBackward(
    q: NativeArray, keys: NativeArray, idx: NativeArray, scores: NativeArray, weights: NativeArray,
    dweights: NativeArray, dq: NativeArray, dkeys: NativeArray,
    T: number, H: number, Hq: number, Hk: number, Dk: number, n: number, k: number, act: number, ref?: boolean,
  ): void;
  embeddingBag(
    idx: NativeArray, w: NativeArray, V: NativeArray, out: NativeArray,
    T: number, J: number, N: number, D: number, ref?: boolean,
  ): void;
  /** Device inputs: outRows [min(T·J, N)] and outValues [min(T·J, N)·D] are required device buffers the kernels
   * fill (rows ascending, then −1), and the call returns undefined. */
  embeddingBagBackward(
    idx: NativeArray, w: NativeArray, V: NativeArray, dout: NativeArray, dw: NativeArray,
    T: number, J: number, N: number, D: number, ref?: boolean,
    outRows?: NativeArray | null, outValues?: NativeArray | null,
  ): NativeSparseRows | undefined;
  /** act: 0 relu, 1 gelu (erf), 2 silu, 3 identity. */
  peerExperts(
    x: NativeArray, idx: NativeArray, g: NativeArray, U: NativeArray, V: NativeArray, out: NativeArray, h: NativeArray,
    T: number, J: number, N: number, D: number, act: number, ref?: boolean,
  ): void;
  /** Device inputs: outRows, outDU and outDV as in embeddingBagBackward (required device buffers; undefined). */
  peerExpertsBackward(
    x: NativeArray, idx: NativeArray, g: NativeArray, U: NativeArray, V: NativeArray, h: NativeArray,
    dout: NativeArray, dx: NativeArray, dg: NativeArray,
    T: number, J: number, N: number, D: number, act: number, ref?: boolean,
    outRows?: NativeArray | null, outDU?: NativeArray | null, outDV?: NativeArray | null,
  ): NativeSparsePair | undefined;
  batchNorm(
    x: NativeArray, gamma: NativeArray | null, beta: NativeArray | null, runningMean: NativeArray | null,
    runningVar: NativeArray | null, y: NativeArray, mean: NativeArray, invstd: NativeArray,
    T: number, F: number, training: boolean, momentum: number, eps: number, ref?: boolean,
  ): void;
  batchNormBackward(
    dy: NativeArray, x: NativeArray, gamma: NativeArray | null, mean: NativeArray, invstd: NativeArray,
    dx: NativeArray, dgamma: NativeArray | null, dbeta: NativeArray | null, T: number, F: number, training: boolean,
    ref?: boolean,
  ): void;
  /** madvise(MADV_HUGEPAGE) on the array's 2 MiB-aligned interior; false where unsupported. */
  adviseHugePages(array: HostArray): boolean;
  /** STREAM-like copy, triad, read-only and scattered-row bandwidth in GB/s (10⁹ bytes moved per second). */
  memBandwidth(bytes: number, threads: number, reps?: number): { copy: number; triad: number; read: number; rows: number };
}

// ---- Transformer ops (issue: training) -------------------------------------------------------------------
export interface NnBinding {
  linear(x: NativeArray, w: NativeArray, b: NativeArray | null, y: NativeArray, T: number, K: number, N: number, ref?: boolean): void;
  linearBackward(
    x: NativeArray, w: NativeArray, dy: NativeArray, dx: NativeArray | null, dw: NativeArray | null, db: NativeArray | null,
    T: number, K: number, N: number, ref?: boolean,
  ): void;
  embedding(ids: NativeArray, w: NativeArray, y: NativeArray, T: number, V: number, D: number, ref?: boolean): void;
  embeddingBackward(ids: NativeArray, dy: NativeArray, dw: NativeArray, T: number, V: number, D: number, ref?: boolean): void;
  layerNorm(
    x: NativeArray, g: NativeArray, b: NativeArray, y: NativeArray, mean: NativeArray, rstd: NativeArray,
    T: number, D: number, eps: number, ref?: boolean,
  ): void;
  layerNormBackward(
    x: NativeArray, g: NativeArray, mean: NativeArray, rstd: NativeArray, dy: NativeArray, dx: NativeArray, dg: NativeArray,
    db: NativeArray, T: number, D: number, ref?: boolean,
  ): void;
  attention(
    qkv: NativeArray, out: NativeArray, qr: NativeArray, kr: NativeArray, lse: NativeArray,
    B: number, S: number, H: number, dh: number, ref?: boolean,
  ): void;
  attentionBackward(
    qkv: NativeArray, out: NativeArray, qr: NativeArray, kr: NativeArray, lse: NativeArray, dout: NativeArray,
    dqkv: NativeArray, B: number, S: number, H: number, dh: number, ref?: boolean,
  ): void;
  crossEntropy(logits: NativeArray, targets: NativeArray, lse: NativeArray, T: number, V: number, ref?: boolean): number;
  crossEntropyBackward(
    logits: NativeArray, targets: NativeArray, lse: NativeArray, dlogits: NativeArray, T: number, V: number, dloss: number,
    ref?: boolean,
  ): void;
  dropout(x: NativeArray, y: NativeArray, p: number, seed: number): void;
  fillNormal(out: Float32Array, state: number, std: number): void;
  sumSquares(x: NativeArray): number;
  scaleInPlace(x: NativeArray, s: number): void;
}

// ---- optimisers -----------------------------------------------------------------------------------------
export interface OptimBinding {
  adamwStep(
    p: NativeArray, g: NativeArray, m: NativeArray, v: NativeArray,
    lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number, ref?: boolean,
  ): void;
  sparseAdamwStep(
    p: NativeArray, m: NativeArray, v: NativeArray, steps: NativeArray, rows: NativeArray, g: NativeArray,
    N: number, D: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, ref?: boolean,
  ): void;
}

export interface NativeBinding
  extends CoreBinding,
    DeviceBinding,
    GemmBinding,
    MoeBinding,
    PkmBinding,
    NnBinding,
    OptimBinding {}
