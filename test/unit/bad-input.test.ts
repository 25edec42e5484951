/**
 * Bad input always gets a clear error: an Error instance whose message names the function and argument, the
 * expected and the actual value, never a JS-internal message ("Cannot read properties of undefined", "x is not
 * iterable", "x is not a function", "Invalid typed array length", ...) and never a crash or a hang.
 *
 * 1. Every export of lib/index.ts, enumerated here (a new export is covered without editing this file): each
 *    function, constructor, static method and namespace member (F.*) is called with each bad value in each of its
 *    first three argument positions (the other arguments undefined). A call may succeed (undefined is often a
 *    default); when it throws, or its promise rejects, the error must follow the rule.
 * 2. A table of the public methods of the main classes on valid instances, each with each bad value: these must
 *    throw (unless the value is listed as accepted), and with a clear error.
 * 3. Exact messages for the most important checks.
 *
 * The tests run in a temporary working directory: some calls create files named after their bad arguments ('x').
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import * as api from '../../lib/index.js';
import {
  AdamW,
  AsyncTrainer,
  Batcher,
  ConfigError,
  DataError,
  DTypeError,
  F,
  JsonlLog,
  Linear,
  Progress,
  Router,
  ShapeError,
  SigmaMoE,
  SparseGradWorkspace,
  Tensor,
  Trainer,
  UsageCounter,
  Variable,
  cosineLr,
  getNumThreads,
  loadCorpus,
  loadSafetensors,
  memory,
  runCompare,
  sampleLogits,
  saveSafetensors,
  setNumThreads,
  splitBytes,
  tidy,
  type ModelConfig,
  type TrainConfig,
} from '../../lib/index.js';
import { loose } from '../helpers.js';

const BAD: readonly unknown[] = [undefined, null, 5, -1, 'x', {}, [], NaN];
const INTERNAL =
  /Cannot read prop|is not a function|is not iterable|Invalid typed array|Cannot convert|undefined is not|null is not|Maximum call stack|is not a constructor|Cannot destructure|Invalid array length|Offset is outside|out of range index/i;

/** A value as the failure lists show it. */
function label(v: unknown): string {
  if (typeof v === 'number' || v === undefined) return String(v);
  return JSON.stringify(v);
}

/** Why a thrown value breaks the rule, or null when it is a clear Error. */
function violation(e: unknown): string | null {
  if (!(e instanceof Error)) return `threw a non-Error: ${String(e)}`;
  if (INTERNAL.test(e.message)) return `${e.constructor.name}: ${e.message}`;
  return null;
}

/** Runs a call (awaiting a returned promise): whether it threw or rejected, and the rule it broke, if any. */
async function outcome(call: () => unknown): Promise<{ threw: boolean; broke: string | null }> {
  try {
    const r = call();
    if (r instanceof Promise) await r;
    return { threw: false, broke: null };
  } catch (e) {
    return { threw: true, broke: violation(e) };
  }
}

/** The error `fn` throws (fails the test when it returns). */
function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(Error);
    return e as Error;
  }
  throw new Error('expected a throw, but the call returned');
}

// ---- the exports, enumerated ------------------------------------------------------------------------------------

interface Callable {
  name: string;
  call: (args: unknown[]) => unknown;
}

function isClass(f: unknown): boolean {
  return typeof f === 'function' && /^class\b/.test(Function.prototype.toString.call(f));
}

/** Every function, constructor, static method and namespace member the package exports. */
function callables(): Callable[] {
  const out: Callable[] = [];
  const add = (name: string, f: unknown, self?: unknown): void => {
    if (typeof f !== 'function') return;
    const fn = f as (...a: unknown[]) => unknown;
    if (isClass(fn)) {
      out.push({ name, call: (args) => Reflect.construct(fn, args) });
      for (const k of Object.getOwnPropertyNames(fn)) {
        if (k === 'length' || k === 'name' || k === 'prototype') continue;
        const d = Object.getOwnPropertyDescriptor(fn, k);
        if (typeof d?.value === 'function') add(`${name}.${k}`, d.value, fn);
      }
    } else out.push({ name, call: (args) => fn.apply(self, args) });
  };
  for (const [name, v] of Object.entries(api)) {
    if (typeof v === 'function') add(name, v);
    else if (Object.prototype.toString.call(v) === '[object Module]') for (const [k, m] of Object.entries(v as object)) add(`${name}.${k}`, m);
  }
  return out;
}

/**
 * Left to their own tests below: runCompare trains for minutes on valid input (and undefined and {} are valid);
 * AsyncTrainer.create starts a worker thread once its arguments are valid.
 */
const SEPARATE = new Set(['runCompare', 'AsyncTrainer.create']);
/** Positions where undefined means a default that does real work: memBandwidth(undefined) measures 3 × 256 MiB. */
const HEAVY_DEFAULT: Record<string, number[]> = { memBandwidth: [0] };

// ---- valid instances for the method table -----------------------------------------------------------------------

const tinyModel: ModelConfig = { vocab: 256, dModel: 16, nLayers: 1, nHeads: 2, context: 8, ffn: { kind: 'dense', dFF: 32 } };
// evalBytes keeps evaluate() (called with its default) to a few windows.
const tinyTrain: TrainConfig = { model: tinyModel, steps: 2, batch: 2, lr: 1e-3, evalBytes: 256 };

let cwd = '';
let dir = '';
let threads = 1;
const inst = {} as {
  t: Tensor;
  gone: Tensor;
  leaf: Variable;
  root: Variable;
  lin: Linear;
  opt: AdamW;
  trainer: Trainer;
  batcher: Batcher;
  usage: UsageCounter;
  log: JsonlLog;
  progress: Progress;
  ws: SparseGradWorkspace;
  router: Router;
  moe: SigmaMoE;
};

beforeAll(() => {
  cwd = process.cwd();
  threads = getNumThreads();
  dir = mkdtempSync(path.join(os.tmpdir(), 'sffn-bad-input-'));
  process.chdir(dir);
  inst.t = Tensor.from([
    [1, 2],
    [3, 4],
  ]);
  inst.gone = Tensor.from([1, 2]);
  inst.gone.dispose();
  inst.leaf = new Variable(Tensor.from([1, 2]), { requiresGrad: true });
  inst.root = F.scale(inst.leaf, 2); // a recorded, non-scalar root: backward needs a seed [2]
  inst.lin = new Linear(4, 3);
  inst.opt = new AdamW(inst.lin.namedParameters(), { lr: 1e-3 });
  inst.trainer = new Trainer(tinyTrain);
  inst.batcher = new Batcher(new Uint8Array(64), { batch: 2, context: 8, seed: 1 });
  inst.usage = new UsageCounter(4);
  inst.log = new JsonlLog('log.jsonl');
  inst.progress = new Progress(4, { stream: { isTTY: false, write: () => true } });
  inst.ws = new SparseGradWorkspace();
  inst.router = new Router(4, 8);
  inst.moe = new SigmaMoE(8, { kind: 'sigma-moe', experts: 4, k: 2, expertSize: 4 });
});

afterAll(() => {
  for (const d of [inst.t, inst.leaf, inst.root, inst.lin, inst.opt, inst.trainer, inst.router, inst.moe]) d?.dispose();
  setNumThreads(threads);
  process.chdir(cwd);
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Public methods with bad arguments, on valid instances. Each is called with every value of BAD (or `values`); it
 * must throw a clear Error for each, except for the values in `accepts` (valid: a default, or an argument it ignores),
 * which may succeed.
 */
interface MethodCase {
  name: string;
  call: (b: unknown) => unknown;
  accepts?: unknown[];
  values?: readonly unknown[];
}

const U = undefined;
const methodCases = (): MethodCase[] => {
  const { t, gone, leaf, root, lin, opt, trainer, batcher, usage, log, progress, ws, router, moe } = inst;
  const T = loose;
  return [
    // Tensor
    { name: 'Tensor.reshape(b)', call: (b) => T(t.reshape.bind(t))(b) },
    { name: 'Tensor.reshape([b, 2])', call: (b) => t.reshape([b as number, 2]), accepts: [-1] },
    { name: 'Tensor.to(b)', call: (b) => T(t.to.bind(t))(b) },
    { name: 'Tensor.item() on [2, 2]', call: () => t.item() },
    { name: 'disposed Tensor.data()', call: () => gone.data() },
    { name: 'disposed Tensor.item()', call: () => gone.item() },
    { name: 'disposed Tensor.reshape([2])', call: () => gone.reshape([2]) },
    { name: 'disposed Tensor.to(cpu)', call: () => gone.to('cpu') },
    { name: 'disposed Tensor.toArray()', call: () => gone.toArray() },
    { name: 'disposed Tensor.clone()', call: () => gone.clone() },
    { name: 'Tensor.dispose() twice', call: () => gone.dispose(), accepts: [...BAD] },
    { name: 'Tensor.from([1, 2], b)', call: (b) => T(Tensor.from)([1, 2], b), accepts: [U, {}] },
    { name: 'Tensor.from([1, 2], { dtype: b })', call: (b) => T(Tensor.from)([1, 2], { dtype: b }), accepts: [U] },
    { name: 'Tensor.from([1, 2], { shape: b })', call: (b) => T(Tensor.from)([1, 2], { shape: b }), accepts: [U] },
    { name: 'Tensor.zeros([2], b)', call: (b) => T(Tensor.zeros)([2], b), accepts: [U, {}] },
    { name: 'Tensor.full([2], b)', call: (b) => T(Tensor.full)([2], b), accepts: [5, -1, NaN] },
    { name: 'Tensor.full([2], 1.5, { dtype: i64 })', call: () => Tensor.full([2], 1.5, { dtype: 'i64' }) },
    { name: 'Tensor.fromHost(new Float32Array(4), b)', call: (b) => T(Tensor.fromHost)(new Float32Array(4), b) },
    { name: 'Tensor.fromHost(new Float32Array(4), [4], b)', call: (b) => T(Tensor.fromHost)(new Float32Array(4), [4], b), accepts: [U] },
    // Variable
    { name: 'new Variable(tensor, b)', call: (b) => new Variable(Tensor.from([1]), b as never), accepts: [U, {}] },
    { name: 'Variable.backward(b) (non-scalar root)', call: (b) => T(root.backward.bind(root))(b) },
    { name: 'Variable.backward(wrong-shape seed)', call: () => root.backward(Tensor.from([1, 1, 1])) },
    { name: 'Variable.backward(i32 seed)', call: () => root.backward(Tensor.from([1, 1], { dtype: 'i32' })) },
    { name: 'Variable.backward(seed, b)', call: (b) => T(root.backward.bind(root))(Tensor.from([1, 1]), b), values: [null, 5, 'x', []] },
    { name: 'Variable.data = b', call: (b) => ((leaf as { data: unknown }).data = b) },
    { name: 'Variable.accumulate(b)', call: (b) => T(leaf.accumulate.bind(leaf))(b) },
    // Module (Linear)
    { name: 'Module.loadStateDict(b)', call: (b) => T(lin.loadStateDict.bind(lin))(b) },
    { name: 'Module.loadStateDict(sd, b)', call: (b) => T(lin.loadStateDict.bind(lin))(lin.stateDict(), b), accepts: [U, {}] },
    { name: 'Module.loadStateDict({ weight: b, bias })', call: (b) => T(lin.loadStateDict.bind(lin))({ weight: b, bias: lin.bias!.data }) },
    { name: 'Module.train(b)', call: (b) => T(lin.train.bind(lin))(b), accepts: [U] },
    { name: 'Module.stateDict(b)', call: (b) => T(lin.stateDict.bind(lin))(b), accepts: [...BAD] },
    { name: 'Module.namedParameters(b)', call: (b) => T(lin.namedParameters.bind(lin))(b), accepts: [U, 'x'] },
    { name: 'Module.namedBuffers(b)', call: (b) => T(lin.namedBuffers.bind(lin))(b), accepts: [U, 'x'] },
    { name: 'Linear.forward(b)', call: (b) => T(lin.forward.bind(lin))(b) },
    { name: 'new Linear(4, 3, b)', call: (b) => new Linear(4, 3, b as never), accepts: [U, {}] },
    { name: 'Parameter.accumulateSparse(b, values)', call: (b) => T(lin.weight.accumulateSparse.bind(lin.weight))(b, Tensor.zeros([1, 4])) },
    { name: 'Parameter.accumulateSparse(rows, b)', call: (b) => T(lin.weight.accumulateSparse.bind(lin.weight))(Tensor.zeros([1], { dtype: 'i32' }), b) },
    // AdamW
    { name: 'AdamW.step(b)', call: (b) => T(opt.step.bind(opt))(b), accepts: [U, 5] },
    { name: 'AdamW.loadStateDict(b)', call: (b) => T(opt.loadStateDict.bind(opt))(b) },
    { name: 'AdamW.loadStateDict(Map with b)', call: (b) => opt.loadStateDict(new Map([['weight.m', b]]) as never) },
    { name: 'new AdamW(params, b)', call: (b) => new AdamW(lin.namedParameters(), b as never) },
    { name: 'new AdamW(params, { lr: 1, beta1: b })', call: (b) => new AdamW([], { lr: 1, beta1: b as number }), accepts: [U] },
    { name: 'new AdamW([[name, b]], opts)', call: (b) => new AdamW([['w', b]] as never, { lr: 1 }) },
    // Trainer
    { name: 'Trainer.evaluate(b)', call: (b) => T(trainer.evaluate.bind(trainer))(b), accepts: [U] },
    { name: 'Trainer.evaluate(valid, b)', call: (b) => T(trainer.evaluate.bind(trainer))('valid', b), accepts: [U, 5] },
    { name: 'Trainer.generate(b, 2)', call: (b) => T(trainer.generate.bind(trainer))(b, 2), accepts: ['x'] },
    { name: 'Trainer.generate(a, b)', call: (b) => T(trainer.generate.bind(trainer))('a', b), accepts: [5] },
    { name: 'Trainer.generate(a, 2, b)', call: (b) => T(trainer.generate.bind(trainer))('a', 2, b), accepts: [U, {}] },
    { name: 'Trainer.lrAt(b)', call: (b) => T(trainer.lrAt.bind(trainer))(b), accepts: [5] },
    { name: 'Trainer.save(b)', call: (b) => T(trainer.save.bind(trainer))(b), accepts: ['x'] },
    // run() only with values that fail validation (undefined and {} would train).
    { name: 'Trainer.run(b)', call: (b) => T(trainer.run.bind(trainer))(b), values: [null, 5, -1, 'x', [], NaN] },
    { name: 'Trainer.run({ progress: b })', call: (b) => trainer.run({ progress: b as never }), values: [null, 5, 'x', {}, []] },
    { name: 'new Trainer(config, b)', call: (b) => new Trainer(tinyTrain, b as never), values: [null, 5, 'x', [], { corpus: 5 }] },
    { name: 'TransformerLM.forward(b, y, 1, 2)', call: (b) => T(trainer.model.forward.bind(trainer.model))(b, new Int32Array(2), 1, 2) },
    { name: 'TransformerLM.forward(x, y, b, 2)', call: (b) => T(trainer.model.forward.bind(trainer.model))(new Int32Array(2), new Int32Array(2), b, 2) },
    { name: 'TransformerLM.nextLogits(b)', call: (b) => T(trainer.model.nextLogits.bind(trainer.model))(b) },
    { name: 'new TransformerLM(config, b)', call: (b) => new api.TransformerLM(tinyModel, b as never).dispose(), accepts: [U, {}] },
    { name: 'new Rng(b)', call: (b) => new api.Rng(b as number), accepts: [5, -1] },
    { name: 'Rng.int(b)', call: (b) => new api.Rng(1).int(b as number), accepts: [5] },
    { name: 'Rng.skip(b)', call: (b) => new api.Rng(1).skip(b as number), accepts: [5] },
    // Batcher, UsageCounter
    { name: 'Batcher.batch(b)', call: (b) => T(batcher.batch.bind(batcher))(b), accepts: [5] },
    { name: 'new Batcher(bytes, b)', call: (b) => new Batcher(new Uint8Array(64), b as never) },
    { name: 'new Batcher(bytes, { batch: 2, context: b, seed: 1 })', call: (b) => new Batcher(new Uint8Array(64), { batch: 2, context: b as number, seed: 1 }), accepts: [5] },
    { name: 'UsageCounter.addIds(b)', call: (b) => T(usage.addIds.bind(usage))(b), accepts: [{ length: 0 }, []] },
    { name: 'UsageCounter.addCounts(b)', call: (b) => T(usage.addCounts.bind(usage))(b) },
    { name: 'UsageCounter.stats(b)', call: (b) => T(usage.stats.bind(usage))(b), accepts: [...BAD] },
    // JsonlLog, Progress, SparseGradWorkspace
    { name: 'JsonlLog.write(b)', call: (b) => T(log.write.bind(log))(b), accepts: [{}] },
    { name: 'new JsonlLog(file, b)', call: (b) => new JsonlLog('log2.jsonl', b as never), accepts: [U, {}] },
    { name: 'Progress.update(b, {})', call: (b) => T(progress.update.bind(progress))(b, {}), accepts: [5] },
    { name: 'Progress.update(1, b)', call: (b) => T(progress.update.bind(progress))(1, b), accepts: [{}] },
    { name: 'Progress.update(1, { loss: b })', call: (b) => progress.update(1, { loss: b as number }), accepts: [U, 5, -1, NaN] },
    { name: 'Progress.note(b)', call: (b) => T(progress.note.bind(progress))(b), accepts: ['x'] },
    { name: 'new Progress(4, b)', call: (b) => new Progress(4, b as never), accepts: [U, {}] },
    { name: 'new Progress(4, { stream: b })', call: (b) => new Progress(4, { stream: b as never }), accepts: [U] },
    { name: 'SparseGradWorkspace.release(b)', call: (b) => T(ws.release.bind(ws))(b), accepts: [...BAD] },
    // Router, SigmaMoE (validated when they were written)
    { name: 'new Router(4, 8, b)', call: (b) => new Router(4, 8, b as never), accepts: [U, {}] },
    { name: 'SigmaMoE.forward(b)', call: (b) => T(moe.forward.bind(moe))(b) },
    { name: 'SigmaMoE.forward(x, b)', call: (b) => T(moe.forward.bind(moe))(Tensor.zeros([2, 8]), b), accepts: [U, 5, -1] },
    { name: 'new SigmaMoE(8, b)', call: (b) => new SigmaMoE(8, b as never) },
    // Functions whose later arguments are only reached with a valid first one
    { name: 'cosineLr(0, b)', call: (b) => T(cosineLr)(0, b) },
    { name: 'cosineLr(0, { lr: 1, total: b })', call: (b) => cosineLr(0, { lr: 1, total: b as number }), accepts: [5] },
    { name: 'sampleLogits([1, 2], b, 0.5)', call: (b) => T(sampleLogits)([1, 2], b, 0.5), accepts: [{}] },
    { name: 'sampleLogits([1, 2], {}, b)', call: (b) => T(sampleLogits)([1, 2], {}, b) },
    { name: 'saveSafetensors(file, b)', call: (b) => T(saveSafetensors)('out.safetensors', b) },
    { name: 'saveSafetensors(file, tensors, b)', call: (b) => T(saveSafetensors)('out.safetensors', new Map(), b), accepts: [U, {}] },
    { name: 'splitBytes(bytes, b)', call: (b) => T(splitBytes)(new Uint8Array(10), b), accepts: [U] },
    { name: 'loadCorpus(moby-dick, b)', call: (b) => T(loadCorpus)('moby-dick', b), values: [null, 5, 'x', [], { minBytes: -1 }] },
    { name: 'tidy(b)', call: (b) => T(tidy)(b) },
  ];
};

describe('bad input gets clear errors', () => {
  it('every exported function, constructor and static method, with bad values in each of its first 3 positions', async () => {
    const broke: string[] = [];
    const entries = callables().filter((c) => !SEPARATE.has(c.name));
    expect(entries.length).toBeGreaterThan(120);
    for (const { name, call } of entries)
      for (let pos = 0; pos < 3; pos++)
        for (const b of BAD) {
          if (b === undefined && HEAVY_DEFAULT[name]?.includes(pos)) continue;
          const args: unknown[] = [undefined, undefined, undefined];
          args[pos] = b;
          const r = await outcome(() => call(args));
          if (r.broke) broke.push(`${name} arg${pos}=${label(b)}: ${r.broke}`);
        }
    expect(broke).toEqual([]);
  });

  it('public methods of the main classes, on valid instances', async () => {
    const broke: string[] = [];
    for (const c of methodCases())
      for (const b of c.values ?? BAD) {
        const r = await outcome(() => c.call(b));
        if (r.broke) broke.push(`${c.name} with ${label(b)}: ${r.broke}`);
        else if (!r.threw && !(c.accepts ?? []).some((a) => Object.is(a, b) || (typeof a === 'object' && a !== null && JSON.stringify(a) === JSON.stringify(b))))
          broke.push(`${c.name} with ${label(b)}: accepted without an error`);
      }
    expect(broke).toEqual([]);
  });

  it('AsyncTrainer.create rejects bad arguments before starting a worker', async () => {
    for (const b of BAD) {
      const t0 = performance.now();
      const r = await outcome(() => AsyncTrainer.create(b as never));
      expect(r, `AsyncTrainer.create(${label(b)})`).toEqual({ threw: true, broke: null });
      // Only arguments that cannot be valid: a valid call would start a worker and build a Trainer.
      const r2 = await outcome(() => AsyncTrainer.create(null, b as never));
      expect(r2, `AsyncTrainer.create(null, ${label(b)})`).toEqual({ threw: true, broke: null });
      const r3 = await outcome(() => AsyncTrainer.create({ ...tinyTrain, steps: 0 }, b as never));
      expect(r3, `AsyncTrainer.create(bad config, ${label(b)})`).toEqual({ threw: true, broke: null });
      expect(performance.now() - t0).toBeLessThan(1000);
    }
    await expect(AsyncTrainer.create({ ...tinyTrain, steps: 0 })).rejects.toThrow(new ConfigError('steps must be an integer ≥ 1, got 0'));
    await expect(AsyncTrainer.create(null)).rejects.toThrow(ConfigError);
    await expect(AsyncTrainer.create(null, { resume: 5 as never })).rejects.toThrow(
      new TypeError('AsyncTrainer.create: opts.resume must be a non-empty string (a checkpoint path), got 5'),
    );
    expect(() => Reflect.construct(AsyncTrainer, [])).toThrow(/AsyncTrainer: the constructor is internal; use await AsyncTrainer\.create/);
  });

  it('runCompare fails fast on bad options (before loading data or training)', () => {
    const cases: unknown[] = [null, 5, -1, 'x', [], NaN, { preset: 5 }, { preset: 'constructor' }, { kinds: 'dense' }, { kinds: ['mlp'] }, { steps: 'x' }, { steps: -1 },
      { log: 5 }, { quiet: 'yes' }, { train: 5 }, { train: { batch: 0 } }, { base: { dModel: 'x' } }, { corpus: 5 }, { outDir: 5 }];
    for (const b of cases) {
      const t0 = performance.now();
      const e = thrown(() => loose(runCompare)(b));
      expect(violation(e), `runCompare(${label(b)})`).toBeNull();
      expect(performance.now() - t0, `runCompare(${label(b)})`).toBeLessThan(2000);
    }
    expect(() => loose(runCompare)(null)).toThrow(new ConfigError('runCompare: opts must be an object (CompareOptions), got null'));
    expect(() => runCompare({ preset: 'constructor' })).toThrow(/compare: unknown preset 'constructor', expected one of quick, small/);
  });
});

describe('exact messages of the main checks', () => {
  it('Tensor: the raw constructor is internal; methods name themselves', () => {
    const e = thrown(() => Reflect.construct(Tensor, []));
    expect(e).toBeInstanceOf(TypeError);
    expect(e.message).toBe(
      'Tensor: the constructor is internal; create tensors with Tensor.from(data, opts), Tensor.fromHost(array, shape), ' +
        'Tensor.zeros(shape, opts) or Tensor.full(shape, value, opts), got new Tensor(undefined, ...)',
    );
    expect(() => inst.t.reshape(undefined as never)).toThrow(new ShapeError('Tensor.reshape: shape must be an array of dims, got undefined'));
    expect(() => Tensor.fromHost(new Float64Array(2) as never, [2])).toThrow(
      new DTypeError('Tensor.fromHost: data must be a Float32Array, Int32Array, BigInt64Array or Uint16Array, got a Float64Array'),
    );
    expect(() => Tensor.fromHost(new Float32Array(4), [3])).toThrow(new ShapeError('Tensor.fromHost: shape [3] needs 3 elements, data has 4'));
    expect(() => Tensor.full([2], 'x' as never)).toThrow(new TypeError("Tensor.full: value must be a number, got string 'x'"));
  });

  it('AdamW', () => {
    const params = inst.lin.namedParameters();
    expect(() => new AdamW(params, undefined as never)).toThrow(new ConfigError('AdamW: opts must be an object (AdamWOptions), got undefined'));
    expect(thrown(() => new AdamW(params, undefined as never))).toBeInstanceOf(ConfigError);
    expect(() => new AdamW(params, { lr: -1 })).toThrow(new ConfigError('AdamW: opts.lr must be a finite number ≥ 0, got -1'));
    expect(() => new AdamW(params, { lr: 1, beta2: 1 })).toThrow(new ConfigError('AdamW: opts.beta2 must be a number in [0, 1), got 1'));
    expect(() => new AdamW(undefined as never, { lr: 1 })).toThrow(
      new TypeError('AdamW: params must be an array of [name, Parameter] pairs (module.namedParameters()), got undefined'),
    );
    expect(() => new AdamW(inst.lin.parameters() as never, { lr: 1 })).toThrow(new TypeError('AdamW: params[0] must be a [name, Parameter] pair, got a Parameter'));
    const before = inst.opt.stepCount;
    expect(() => inst.opt.step(NaN)).toThrow(new RangeError('AdamW.step: lr must be a finite number ≥ 0, got NaN'));
    expect(inst.opt.stepCount).toBe(before); // a rejected step does not count
    expect(() => inst.opt.loadStateDict({} as never)).toThrow(
      new TypeError('AdamW.loadStateDict: sd must be a Map<string, Tensor> (what stateDict() returns), got an object'),
    );
  });

  it('cosineLr', () => {
    expect(() => loose(cosineLr)(5)).toThrow(new ConfigError('cosineLr: opts must be an object (ScheduleOptions), got undefined'));
    expect(() => loose(cosineLr)(undefined, { lr: 1, total: 10 })).toThrow(new RangeError('cosineLr: step must be a finite number ≥ 0, got undefined'));
    expect(() => cosineLr(0, { lr: 1, total: 0 })).toThrow(new ConfigError('cosineLr: opts.total must be an integer ≥ 1, got 0'));
    expect(() => cosineLr(0, { lr: 1, total: 10, warmup: 1.5 })).toThrow(new ConfigError('cosineLr: opts.warmup must be an integer ≥ 0, got 1.5'));
    expect(() => cosineLr(0, { lr: 'x' as never, total: 10 })).toThrow(new ConfigError("cosineLr: opts.lr must be a finite number ≥ 0, got string 'x'"));
  });

  it('saveSafetensors / loadSafetensors', () => {
    expect(() => loose(saveSafetensors)(undefined, new Map())).toThrow(new TypeError('saveSafetensors: file must be a non-empty string (a path), got undefined'));
    expect(() => loose(saveSafetensors)('a.safetensors', {})).toThrow(new TypeError('saveSafetensors: tensors must be a Map<string, Tensor>, got an object'));
    expect(() => loose(saveSafetensors)('a.safetensors', new Map([['w', [1, 2]]]))).toThrow(
      new TypeError("saveSafetensors: tensors.get('w') must be a Tensor, got an array of length 2"),
    );
    expect(() => loose(saveSafetensors)('a.safetensors', new Map(), { step: 5 })).toThrow(new TypeError('saveSafetensors: metadata.step must be a string, got 5'));
    expect(() => saveSafetensors(path.join('no-such-dir', 'a.safetensors'), new Map())).toThrow(
      new DataError(`saveSafetensors: directory does not exist: ${path.resolve('no-such-dir')}`),
    );
    expect(() => loose(loadSafetensors)(5)).toThrow(new TypeError('loadSafetensors: file must be a non-empty string (a path), got 5'));
    expect(() => loadSafetensors('missing.safetensors')).toThrow(new DataError(`loadSafetensors: file not found: ${path.resolve('missing.safetensors')}`));
    // A header that parses but is not a safetensors header: no tensor is left behind.
    const before = memory();
    const json = Buffer.from(JSON.stringify({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: 5 }));
    const buf = Buffer.concat([Buffer.alloc(8), json, Buffer.alloc(4)]);
    buf.writeBigUInt64LE(BigInt(json.length), 0);
    expect(() => api.decodeSafetensors(buf, 'f')).toThrow(new ShapeError('f: tensor b must be an object { dtype, shape, data_offsets }, got 5'));
    expect(memory()).toEqual(before);
  });

  it('sampleLogits', () => {
    expect(() => loose(sampleLogits)(undefined, {}, 0.5)).toThrow(
      new TypeError('sampleLogits: logits must be a non-empty array or typed array of numbers, got undefined'),
    );
    expect(() => loose(sampleLogits)([1, 2], null, 0.5)).toThrow(new TypeError('sampleLogits: opts must be an object (SampleOptions), got null'));
    expect(() => loose(sampleLogits)([1, 2], {}, 1)).toThrow(new RangeError('sampleLogits: u must be a uniform draw in [0, 1), got 1'));
    expect(() => sampleLogits([1, 2], { temperature: -1 }, 0.5)).toThrow(new RangeError('sampleLogits: opts.temperature must be ≥ 0, got -1'));
    expect(() => sampleLogits([1, 2], { topP: 0 }, 0.5)).toThrow(new RangeError('sampleLogits: opts.topP must be in (0, 1], got 0'));
  });

  it('tidy, noGrad, releaseGraph, clipGradNorm', () => {
    expect(() => loose(tidy)(undefined)).toThrow(new TypeError('tidy: fn must be a function, got undefined'));
    expect(() => loose(tidy)(5)).toThrow(new TypeError('tidy: fn must be a function, got 5'));
    expect(() => loose(api.noGrad)(null)).toThrow(new TypeError('noGrad: fn must be a function, got null'));
    expect(() => loose(api.releaseGraph)({})).toThrow(
      new TypeError('releaseGraph: order must be a Variable (the root of a graph) or an array of tape nodes, got an object'),
    );
    expect(() => loose(api.clipGradNorm)(undefined, 1)).toThrow(
      new TypeError('clipGradNorm: params must be an array of Parameters (module.parameters()), got undefined'),
    );
    expect(() => loose(api.clipGradNorm)([], NaN)).toThrow(new RangeError('clipGradNorm: maxNorm must be a number (≤ 0: measure only), got NaN'));
    expect(() => loose(api.clipGradNormTensors)([Tensor.zeros([2]), 5], 1)).toThrow(/^clipGradNormTensors: grads\[1\] must be a Tensor/);
  });

  it('Batcher', () => {
    expect(() => loose((d: unknown, o: unknown) => new Batcher(d as never, o as never))(undefined, { batch: 1, context: 4, seed: 0 })).toThrow(
      new TypeError('Batcher: data must be a Uint8Array, got undefined'),
    );
    expect(() => new Batcher(new Uint8Array(64), undefined as never)).toThrow(new ConfigError('Batcher: opts must be an object (BatchOptions), got undefined'));
    expect(() => new Batcher(new Uint8Array(64), { batch: 0, context: 4, seed: 0 })).toThrow(new ConfigError('Batcher: opts.batch must be a positive integer, got 0'));
    expect(() => new Batcher(new Uint8Array(64), { batch: 1, context: 4, seed: 0.5 })).toThrow(new ConfigError('Batcher: opts.seed must be an integer, got 0.5'));
    expect(() => inst.batcher.batch(-1)).toThrow(new RangeError('Batcher.batch: step must be an integer ≥ 0, got -1'));
  });

  it('splitBytes', () => {
    expect(() => loose(splitBytes)(undefined)).toThrow(new TypeError('splitBytes: bytes must be a Uint8Array, got undefined'));
    expect(() => loose(splitBytes)([1, 2, 3])).toThrow(new TypeError('splitBytes: bytes must be a Uint8Array, got an array of length 3'));
    expect(() => splitBytes(new Uint8Array(10), 2)).toThrow(new RangeError('splitBytes: valid must be a fraction in [0, 1], got 2'));
    expect(() => splitBytes(new Uint8Array(10), 0.6, 0.6)).toThrow(new RangeError('splitBytes: valid + test must be ≤ 1, got 0.6 + 0.6'));
  });

  it('loadCorpus', () => {
    expect(() => loose(loadCorpus)(null)).toThrow(
      new TypeError("loadCorpus: spec must be a non-empty string ('moby-dick', 'sotu', 'enwik8:<file>' or a file path), got null"),
    );
    expect(() => loose(loadCorpus)(5)).toThrow(/^loadCorpus: spec must be a non-empty string .*, got 5$/);
    expect(() => loose(loadCorpus)('moby-dick', null)).toThrow(new TypeError('loadCorpus: opts must be an object ({ minBytes?: number }), got null'));
    expect(() => loadCorpus('moby-dick', { minBytes: -1 })).toThrow(new RangeError('loadCorpus: opts.minBytes must be an integer ≥ 0, got -1'));
  });
});
