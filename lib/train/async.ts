/**
 * AsyncTrainer: a Trainer that lives on a worker thread, so a server's event loop keeps running while steps
 * execute. `trainStepAsync()` posts one step to the worker and resolves with its StepResult; requests are
 * served in order. The native thread pool is per process: do not run other heavy ops on the main thread
 * while steps are in flight if you care about timings.
 *
 * @example
 * ```ts
 * const t = await AsyncTrainer.create(config);
 * const r = await t.trainStepAsync();          // the event loop stays free meanwhile
 * await t.saveAsync('ckpt.safetensors');
 * await t.close();
 * ```
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { isObject, showValue } from '../errors.js';
import { ConfigError } from '../nn/config.js';
import { packageRoot } from '../native/loader.js';
import { validateTrainConfig, type EvalResult, type LayerUsage, type StepResult, type TrainConfig } from './trainer.js';
import type { SampleOptions } from './sample.js';

/** The compiled worker script (from the TypeScript sources, the dist/ build is used: run `npm run build:ts`). */
function workerPath(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return path.join(path.dirname(here), 'worker.js');
  const dist = path.join(packageRoot(), 'dist', 'lib', 'train', 'worker.js');
  if (!existsSync(dist)) throw new Error(`AsyncTrainer: ${dist} is missing; run \`npm run build:ts\``);
  return dist;
}

// Only create() may call the constructor (it starts a worker thread): it passes this token.
const INTERNAL: unique symbol = Symbol('AsyncTrainer.internal');

export class AsyncTrainer {
  readonly #worker: Worker;
  #next = 0;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  /** Step count and parameter count after init. */
  info: { step: number; params: number; config: TrainConfig } | null = null;

  private constructor(token: typeof INTERNAL) {
    if (token !== INTERNAL) throw new TypeError(`AsyncTrainer: the constructor is internal; use await AsyncTrainer.create(config, opts), got new AsyncTrainer(${showValue(token)})`);
    this.#worker = new Worker(workerPath());
    this.#worker.on('message', (m: { id: number; ok: boolean; value?: unknown; error?: { name: string; message: string } }) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else {
        const e = new Error(m.error!.message);
        e.name = m.error!.name;
        p.reject(e);
      }
    });
    this.#worker.on('error', (e) => {
      for (const p of this.#pending.values()) p.reject(e);
      this.#pending.clear();
    });
  }

  #closed = false;

  #call<T>(op: string, ...args: unknown[]): Promise<T> {
    if (this.#closed) return Promise.reject(new Error(`AsyncTrainer: ${op} after close(); the worker has stopped`));
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#worker.postMessage({ id, op, args });
    });
  }

  /** Starts a worker with a new Trainer (config validated there; errors reject), or resumes a checkpoint. */
  static async create(config: TrainConfig | null, opts: { resume?: string } = {}): Promise<AsyncTrainer> {
    // Argument errors reject before the worker starts.
    if (!isObject(opts)) throw new TypeError(`AsyncTrainer.create: opts must be an object ({ resume?: string }), got ${showValue(opts)}`);
    if (opts.resume !== undefined && (typeof opts.resume !== 'string' || opts.resume.length === 0))
      throw new TypeError(`AsyncTrainer.create: opts.resume must be a non-empty string (a checkpoint path), got ${showValue(opts.resume)}`);
    if (opts.resume === undefined) validateTrainConfig(config!);
    else if (config !== null && config !== undefined && !isObject(config))
      throw new ConfigError(`AsyncTrainer.create: config must be null or an object of overrides when resuming, got ${showValue(config)}`);
    const t = new AsyncTrainer(INTERNAL);
    try {
      t.info = await t.#call('init', config, opts.resume ?? null);
    } catch (e) {
      await t.#worker.terminate();
      throw e;
    }
    return t;
  }

  /** Runs one training step on the worker thread. */
  trainStepAsync(): Promise<StepResult> {
    return this.#call('step');
  }
  evaluateAsync(split: 'valid' | 'test' | 'train' = 'valid', maxBytes?: number): Promise<EvalResult> {
    return this.#call('evaluate', split, maxBytes);
  }
  saveAsync(file: string): Promise<void> {
    return this.#call('save', file);
  }
  generateAsync(prompt: string, n: number, opts: SampleOptions & { seed?: number } = {}): Promise<string> {
    return this.#call('generate', prompt, n, opts);
  }
  usageAsync(): Promise<LayerUsage[]> {
    return this.#call('usage');
  }
  /** Frees the model and stops the worker. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#call('close');
    } finally {
      this.#closed = true;
      await this.#worker.terminate();
    }
  }
}
