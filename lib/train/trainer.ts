/**
 * The training loop: seeded batches → forward (CE + auxiliary terms) → backward → gradient clipping → AdamW
 * with a cosine schedule; evaluation in bits per byte (mean cross-entropy in nats / ln 2 over a fixed,
 * contiguous slice of a split); checkpoints as safetensors (model, optimiser moments, step, config) that
 * resume bit-identically (batches, dropout and expert-dropout masks are pure functions of (seed, step));
 * a JSONL log; per-layer expert-usage statistics; generation with temperature / top-p.
 *
 * @example
 * ```ts
 * const t = new Trainer({ model: { vocab: 256, dModel: 128, nLayers: 4, nHeads: 4, context: 128,
 *   ffn: { kind: 'sigma-moe', experts: 16, k: 4, expertSize: 32 } }, steps: 500, batch: 16, lr: 2e-3 });
 * await t.run();
 * console.log(t.evaluate().bpb, t.generate('Call me ', 100));
 * ```
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { Tensor, tidy, memory } from '../tensor.js';
import { getNumThreads, setNumThreads } from '../info.js';
import { noGrad } from '../autograd.js';
import { BYTE_VOCAB, Batcher, DataError, evalBatches, loadCorpus, encodeText, decodeBytes, type Corpus } from '../data/corpus.js';
import { checkInt, isObject, showValue } from '../errors.js';
import { Rng, hash32 } from '../data/random.js';
import { TransformerLM } from '../nn/transformer.js';
import { ConfigError, validateModelConfig, modelParams, type ModelConfig } from '../nn/config.js';
import { AdamW } from '../optim/adamw.js';
import { cosineLr } from '../optim/schedule.js';
import { clipGradNorm } from '../optim/clip.js';
import { loadSafetensors, saveSafetensors } from './safetensors.js';
import { JsonlLog, Progress } from './log.js';
import { sampleLogits, type SampleOptions } from './sample.js';
import type { UsageStats } from './usage.js';

export interface TrainConfig {
  model: ModelConfig;
  /** Corpus: 'moby-dick' (default), 'sotu', 'enwik8:<file>' or a file path. */
  data?: string;
  steps: number;
  batch: number;
  lr: number;
  /** Final learning rate of the cosine decay (default 0). */
  minLr?: number;
  warmup?: number;
  weightDecay?: number;
  /** Global gradient-norm clip (default 0.25, the σ-MoE paper's); 0 disables. */
  clip?: number;
  /** Learning rate of sparse tables (PKM values, PEER experts). */
  sparseLr?: number;
  seed?: number;
  /** Evaluate every n steps (0: only at the end). */
  evalEvery?: number;
  /** Bytes of the split used by evaluations (default 65536). */
  evalBytes?: number;
  /** Windows per evaluation batch (default: batch). */
  evalBatch?: number;
  /** Checkpoint file (safetensors) written every checkpointEvery steps and at the end. */
  checkpoint?: string;
  checkpointEvery?: number;
  /** JSONL log file. */
  log?: string;
  /** CPU threads (default: the library's). */
  threads?: number;
}

/** Defaults filled in. */
export type ResolvedTrainConfig = Required<Omit<TrainConfig, 'checkpoint' | 'log' | 'threads' | 'sparseLr'>> &
  Pick<TrainConfig, 'checkpoint' | 'log' | 'threads' | 'sparseLr'>;

/**
 * Validates a training configuration (see validateTrainConfig) and fills in the defaults. A field given as
 * `undefined` gets its default, as an absent one does.
 */
export function resolveTrainConfig(cfg: TrainConfig): ResolvedTrainConfig {
  validateTrainConfig(cfg);
  return withDefaults(cfg);
}

/** resolveTrainConfig of a config already validated (the Trainer validates before checking its options). */
function withDefaults(cfg: TrainConfig): ResolvedTrainConfig {
  const out: Record<string, unknown> = {
    data: 'moby-dick',
    minLr: 0,
    warmup: 0,
    weightDecay: 0,
    clip: 0.25,
    seed: 1,
    evalEvery: 0,
    evalBytes: 65536,
    evalBatch: cfg.batch,
    checkpointEvery: 0,
  };
  for (const [k, v] of Object.entries(cfg)) if (v !== undefined) out[k] = v;
  return out as ResolvedTrainConfig;
}

function num(v: unknown, what: string, lo: number, int = false, hi = Infinity): void {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi || (int && !Number.isInteger(v)))
    throw new ConfigError(
      `${what} must be ${int ? 'an integer' : 'a number'} ${hi === Infinity ? `≥ ${lo}` : `in [${lo}, ${hi}]`}, got ${showValue(v)}`,
    );
}

function str(v: unknown, what: string): void {
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(`${what} must be a non-empty string, got ${showValue(v)}`);
}

/** Validates a training configuration (model included) without touching data or allocating tensors. */
export function validateTrainConfig(cfg: TrainConfig): void {
  if (!isObject(cfg)) throw new ConfigError(`train config must be an object, got ${showValue(cfg)}`);
  validateModelConfig(cfg.model);
  num(cfg.steps, 'steps', 1, true);
  num(cfg.batch, 'batch', 1, true);
  num(cfg.lr, 'lr', 0);
  if (cfg.minLr !== undefined) num(cfg.minLr, 'minLr', 0);
  if (cfg.warmup !== undefined) num(cfg.warmup, 'warmup', 0, true);
  if (cfg.weightDecay !== undefined) num(cfg.weightDecay, 'weightDecay', 0);
  if (cfg.clip !== undefined) num(cfg.clip, 'clip', 0);
  if (cfg.sparseLr !== undefined) num(cfg.sparseLr, 'sparseLr', 0);
  if (cfg.seed !== undefined) num(cfg.seed, 'seed', 0, true);
  if (cfg.evalEvery !== undefined) num(cfg.evalEvery, 'evalEvery', 0, true);
  if (cfg.evalBytes !== undefined) num(cfg.evalBytes, 'evalBytes', 1, true);
  if (cfg.evalBatch !== undefined) num(cfg.evalBatch, 'evalBatch', 1, true);
  if (cfg.checkpointEvery !== undefined) num(cfg.checkpointEvery, 'checkpointEvery', 0, true);
  if (cfg.threads !== undefined) num(cfg.threads, 'threads', 1, true, 256); // setNumThreads' range
  if (cfg.data !== undefined) str(cfg.data, 'data');
  if (cfg.checkpoint !== undefined) str(cfg.checkpoint, 'checkpoint');
  if (cfg.log !== undefined) str(cfg.log, 'log');
  if (cfg.model.vocab !== BYTE_VOCAB) throw new ConfigError(`model.vocab must be ${BYTE_VOCAB} for byte-level corpora, got ${cfg.model.vocab}`);
  if (cfg.checkpoint !== undefined && !existsSync(path.dirname(path.resolve(cfg.checkpoint))))
    throw new ConfigError(`checkpoint directory does not exist: ${path.dirname(path.resolve(cfg.checkpoint))}`);
}

export interface StepResult {
  step: number;
  /** Total loss (CE + auxiliary), nats. */
  loss: number;
  /** Cross-entropy, nats. */
  ce: number;
  aux: number;
  /** Training bits per byte of this batch (ce / ln 2). */
  bpb: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  ms: number;
}

export interface EvalResult {
  split: string;
  /** Mean cross-entropy, nats. */
  loss: number;
  bpb: number;
  tokens: number;
}

export interface LayerUsage extends UsageStats {
  layer: number;
  kind: string;
  counts: number[];
}

const FORMAT = 'sparse-ffn-checkpoint-1';

/** @internal Checks a Corpus given as `at` (e.g. `Trainer: opts.corpus`): a name and three Uint8Array splits. */
export function checkCorpus(c: unknown, at: string): asserts c is Corpus {
  const r = c as Record<string, unknown>;
  if (!isObject(c) || !(r.train instanceof Uint8Array) || !(r.valid instanceof Uint8Array) || !(r.test instanceof Uint8Array) || typeof r.name !== 'string')
    throw new TypeError(`${at} must be a Corpus ({ name, train, valid, test } with Uint8Array splits, as loadCorpus returns), got ${showValue(c)}`);
}

/** Checks the `opts` of new Trainer / Trainer.resume: an object whose corpus, if given, is a Corpus. */
function checkCorpusOption(opts: unknown, op: string): void {
  if (!isObject(opts)) throw new TypeError(`${op}: opts must be an object ({ corpus?: Corpus }), got ${showValue(opts)}`);
  const c = (opts as { corpus?: unknown }).corpus;
  if (c !== undefined) checkCorpus(c, `${op}: opts.corpus`);
}

export class Trainer {
  readonly config: ResolvedTrainConfig;
  readonly model: TransformerLM;
  readonly optimizer: AdamW;
  readonly corpus: Corpus;
  readonly batcher: Batcher;
  /** The next step to run (0-based); equals the number of steps done. */
  step = 0;
  /** Tokens trained on in this process (for tokens/s). */
  tokensSeen = 0;
  readonly history: StepResult[] = [];
  readonly evals: (EvalResult & { step: number })[] = [];
  /** Largest tensor memory seen (after a forward, when activations peak), bytes. */
  peakTensorBytes = 0;
  #log: JsonlLog | null = null;

  /**
   * Validates everything (config, data) before allocating the model, so a bad config fails before any training.
   */
  constructor(config: TrainConfig, opts: { corpus?: Corpus; appendLog?: boolean } = {}) {
    validateTrainConfig(config);
    checkCorpusOption(opts, 'Trainer');
    if (opts.appendLog !== undefined && typeof opts.appendLog !== 'boolean')
      throw new TypeError(`Trainer: opts.appendLog must be a boolean, got ${showValue(opts.appendLog)}`);
    this.config = withDefaults(config);
    const c = this.config;
    this.corpus = opts.corpus ?? loadCorpus(c.data, { minBytes: c.model.context + 1 });
    if (this.corpus.valid.length < c.model.context + 1)
      throw new DataError(`corpus ${this.corpus.name}: the valid split has ${this.corpus.valid.length} bytes, need ≥ context + 1 = ${c.model.context + 1}`);
    if (c.threads) setNumThreads(c.threads);
    this.batcher = new Batcher(this.corpus.train, { batch: c.batch, context: c.model.context, seed: c.seed });
    this.model = new TransformerLM(c.model, { seed: c.seed });
    this.optimizer = new AdamW(this.model.namedParameters(), { lr: c.lr, weightDecay: c.weightDecay, sparseLr: c.sparseLr });
    if (c.log) this.#log = new JsonlLog(c.log, { append: opts.appendLog });
  }

  get numParameters(): number {
    return this.model.numParameters();
  }

  lrAt(step: number): number {
    checkInt(step, 'Trainer.lrAt: step', 0);
    const c = this.config;
    return cosineLr(step, { lr: c.lr, total: c.steps, warmup: c.warmup, minLr: c.minLr });
  }

  /** Runs one training step synchronously. */
  trainStep(): StepResult {
    const c = this.config;
    const t0 = performance.now();
    const step = this.step;
    const { x, y, batch: B, context: S } = this.batcher.batch(step);
    const lr = this.lrAt(step);
    this.model.train();
    let res = { loss: 0, ce: 0, aux: 0, gradNorm: 0 };
    tidy(() => {
      const out = this.model.forward(x, y, B, S, { step });
      const loss = out.loss.data.item();
      const m = memory();
      this.peakTensorBytes = Math.max(this.peakTensorBytes, m.hostBytes + m.deviceBytes);
      out.loss.backward();
      const gradNorm = clipGradNorm(this.model.parameters(), c.clip);
      noGrad(() => this.optimizer.step(lr));
      this.model.zeroGrad();
      res = { loss, ce: out.ce, aux: out.aux, gradNorm };
      return null;
    });
    this.step++;
    this.tokensSeen += B * S;
    const r: StepResult = { step: this.step, ...res, bpb: res.ce / Math.LN2, lr, tokens: B * S, ms: performance.now() - t0 };
    this.history.push(r);
    if (!Number.isFinite(r.loss)) throw new Error(`training diverged at step ${this.step}: loss ${r.loss}`);
    return r;
  }

  /** Mean cross-entropy and bits per byte over the first `maxBytes` of a split (deterministic windows). */
  evaluate(split: 'valid' | 'test' | 'train' = 'valid', maxBytes = this.config.evalBytes): EvalResult {
    if (split !== 'valid' && split !== 'test' && split !== 'train')
      throw new RangeError(`Trainer.evaluate: split must be 'valid', 'test' or 'train', got ${showValue(split)}`);
    if (typeof maxBytes !== 'number' || !(maxBytes >= 1))
      throw new RangeError(`Trainer.evaluate: maxBytes must be a number ≥ 1 (Infinity: the whole split), got ${showValue(maxBytes)}`);
    const c = this.config;
    const data = this.corpus[split];
    this.model.eval();
    this.model.resetUsage();
    let sum = 0;
    let tokens = 0;
    try {
      for (const b of evalBatches(data, c.evalBatch, c.model.context, maxBytes)) {
        noGrad(() =>
          tidy(() => {
            const out = this.model.forward(b.x, b.y, b.batch, b.context);
            sum += out.ce * b.batch * b.context;
            tokens += b.batch * b.context;
            return null;
          }),
        );
      }
    } finally {
      this.model.train();
    }
    const loss = tokens ? sum / tokens : NaN;
    return { split, loss, bpb: loss / Math.LN2, tokens };
  }

  /** Per-layer usage of experts / memory slots, accumulated since the last reset (evaluate() resets it). */
  usage(): LayerUsage[] {
    return this.model.usageCounters().map(({ layer, kind, counter }) => ({ layer, kind, ...counter.stats(), counts: Array.from(counter.counts) }));
  }

  /** Saves model, optimiser state, step and config to a safetensors file (atomic). */
  save(file: string): void {
    if (typeof file !== 'string' || file.length === 0) throw new TypeError(`Trainer.save: file must be a non-empty string (a path), got ${showValue(file)}`);
    mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    const tensors = new Map<string, Tensor>();
    for (const [k, t] of this.model.stateDict()) tensors.set(`model.${k}`, t);
    const opt = this.optimizer.stateDict();
    for (const [k, t] of opt) tensors.set(`optim.${k}`, t);
    try {
      saveSafetensors(file, tensors, { format: FORMAT, step: String(this.step), config: JSON.stringify(this.config) });
    } finally {
      opt.get('__step')?.dispose();
    }
  }

  /**
   * Restores a Trainer from a checkpoint: same config (overrides may change run-length fields such as steps,
   * log or checkpoint), weights, optimiser moments and step. Continuing gives the losses an uninterrupted
   * run would have given, bit for bit.
   */
  static resume(file: string, overrides: Partial<TrainConfig> = {}, opts: { corpus?: Corpus } = {}): Trainer {
    if (typeof file !== 'string' || file.length === 0)
      throw new TypeError(`Trainer.resume: file must be a non-empty string (a checkpoint path), got ${showValue(file)}`);
    if (!isObject(overrides)) throw new ConfigError(`Trainer.resume: overrides must be an object (TrainConfig fields), got ${showValue(overrides)}`);
    checkCorpusOption(opts, 'Trainer.resume');
    if (!existsSync(file)) throw new DataError(`resume: checkpoint not found: ${path.resolve(file)}`);
    const { tensors, metadata } = loadSafetensors(file);
    try {
      if (metadata.format !== FORMAT) throw new DataError(`resume: ${file} is not a sparse-ffn checkpoint (format ${metadata.format ?? 'missing'})`);
      const cfg = { ...(JSON.parse(metadata.config) as TrainConfig), ...overrides };
      const t = new Trainer(cfg, { corpus: opts.corpus, appendLog: true });
      const model = new Map<string, Tensor>();
      const optim = new Map<string, Tensor>();
      for (const [k, v] of tensors) {
        if (k.startsWith('model.')) model.set(k.slice(6), v);
        else if (k.startsWith('optim.')) optim.set(k.slice(6), v);
      }
      t.model.loadStateDict(model);
      t.optimizer.loadStateDict(optim);
      t.step = Number(metadata.step);
      return t;
    } finally {
      for (const v of tensors.values()) v.dispose();
    }
  }

  /**
   * Trains until config.steps, evaluating every evalEvery steps and at the end, checkpointing and logging.
   * Returns the final validation result.
   */
  run(opts: { progress?: Progress | false; label?: string; quiet?: boolean } = {}): EvalResult {
    const op = 'Trainer.run';
    if (!isObject(opts)) throw new TypeError(`${op}: opts must be an object ({ progress?, label?, quiet? }), got ${showValue(opts)}`);
    if (opts.progress !== undefined && opts.progress !== false && !(opts.progress instanceof Progress))
      throw new TypeError(`${op}: opts.progress must be a Progress or false, got ${showValue(opts.progress)}`);
    if (opts.label !== undefined && typeof opts.label !== 'string') throw new TypeError(`${op}: opts.label must be a string, got ${showValue(opts.label)}`);
    if (opts.quiet !== undefined && typeof opts.quiet !== 'boolean') throw new TypeError(`${op}: opts.quiet must be a boolean, got ${showValue(opts.quiet)}`);
    const c = this.config;
    const progress = opts.progress === false ? null : (opts.progress ?? new Progress(c.steps, { label: opts.label, startStep: this.step }));
    this.#log?.write({ event: 'start', step: this.step, params: this.numParameters, config: c });
    const t0 = performance.now();
    const tokens0 = this.tokensSeen;
    let last: EvalResult | null = null;
    while (this.step < c.steps) {
      const r = this.trainStep();
      this.#log?.write({ event: 'step', ...r });
      progress?.update(this.step, { loss: r.bpb, lossLabel: 'train bpb', tokens: this.tokensSeen - tokens0, extra: `lr ${r.lr.toExponential(2)}` });
      const end = this.step === c.steps;
      if ((c.evalEvery > 0 && this.step % c.evalEvery === 0) || end) {
        last = this.evaluate('valid');
        this.evals.push({ step: this.step, ...last });
        const usage = this.usage();
        this.#log?.write({ event: 'eval', step: this.step, ...last, usage: usage.map(({ counts: _c, ...u }) => u) });
        if (!opts.quiet) progress?.note(`step ${this.step}: valid ${last.bpb.toFixed(4)} bits/byte`);
      }
      if (c.checkpoint && ((c.checkpointEvery > 0 && this.step % c.checkpointEvery === 0) || end)) this.save(c.checkpoint);
    }
    progress?.done();
    if (!last) {
      last = this.evaluate('valid');
      this.evals.push({ step: this.step, ...last });
    }
    const secs = (performance.now() - t0) / 1000;
    this.#log?.write({ event: 'end', step: this.step, ...last, seconds: secs, tokensPerSecond: (this.tokensSeen - tokens0) / secs, peak: memory() });
    return last;
  }

  /** Samples n bytes after `prompt` (evaluation mode), at most `context` bytes of history. */
  generate(prompt: string, n: number, opts: SampleOptions & { seed?: number } = {}): string {
    const S = this.config.model.context;
    return generateText(this.model, prompt, n, S, opts);
  }

  dispose(): void {
    this.model.dispose();
    this.optimizer.dispose();
  }
}

/**
 * Autoregressive sampling from a byte-level model: `n` bytes after `prompt` (an empty prompt stands for "\n"),
 * each from the logits of the last `context` bytes (1 ≤ context ≤ model.config.context), with temperature /
 * top-p and a seed (the same seed gives the same text). Returns the continuation (without the prompt),
 * decoded as UTF-8.
 */
export function generateText(model: TransformerLM, prompt: string, n: number, context: number, opts: SampleOptions & { seed?: number } = {}): string {
  if (!(model instanceof TransformerLM)) throw new TypeError(`generateText: model must be a TransformerLM, got ${showValue(model)}`);
  if (typeof prompt !== 'string') throw new TypeError(`generateText: prompt must be a string, got ${showValue(prompt)}`);
  checkInt(n, 'generateText: n (bytes to generate)', 0);
  const maxContext = model.config.context;
  if (typeof context !== 'number' || !Number.isInteger(context) || context < 1 || context > maxContext)
    throw new RangeError(`generateText: context must be an integer in [1, model.config.context=${maxContext}], got ${showValue(context)}`);
  if (opts === null || typeof opts !== 'object') throw new TypeError(`generateText: opts must be an object, got ${showValue(opts)}`);
  if (opts.seed !== undefined) checkInt(opts.seed, 'generateText: opts.seed');
  if (opts.temperature !== undefined && !(typeof opts.temperature === 'number' && opts.temperature >= 0))
    throw new RangeError(`generateText: opts.temperature must be a number ≥ 0, got ${showValue(opts.temperature)}`);
  if (opts.topP !== undefined && !(typeof opts.topP === 'number' && opts.topP > 0 && opts.topP <= 1))
    throw new RangeError(`generateText: opts.topP must be a number in (0, 1], got ${showValue(opts.topP)}`);
  const V = model.config.vocab;
  if (V > BYTE_VOCAB) throw new ConfigError(`generateText: model.config.vocab must be ≤ ${BYTE_VOCAB} (byte ids), got ${V}`);
  const ids = Array.from(encodeText(prompt.length ? prompt : '\n'));
  const bad = ids.findIndex((b) => b >= V);
  if (bad >= 0) throw new RangeError(`generateText: prompt byte ${ids[bad]} at offset ${bad} is outside the model's vocabulary [0, ${V})`);
  const rng = new Rng(hash32(opts.seed ?? 0, 0x9e4));
  const out: number[] = [];
  const wasTraining = model.training;
  model.eval();
  try {
    for (let i = 0; i < n; i++) {
      const ctx = Int32Array.from(ids.slice(-context));
      const logits = model.nextLogits(ctx);
      const next = sampleLogits(logits, opts, rng.next());
      ids.push(next);
      out.push(next);
    }
  } finally {
    model.train(wasTraining);
  }
  return decodeBytes(out);
}

/** Model parameters of a config without building it. */
export function countParameters(cfg: ModelConfig): number {
  return modelParams(cfg);
}

export { getNumThreads };
