/**
 * The small public helpers: byte text coding, backend info formatting, training-config validation and
 * defaults, the compare command's model configs, the autograd switches and tape recording, FFN FLOP counts and
 * per-layer config lookup, and text generation from a tiny (untrained) model. Each with concrete values and
 * its bad-input errors (the argument, the expected and the actual value named).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  BYTE_VOCAB,
  ConfigError,
  DEFAULT_KINDS,
  FFN_KINDS,
  PRESETS,
  Tensor,
  TransformerLM,
  Variable,
  compareConfigs,
  decodeBytes,
  encodeText,
  ffnFlopsPerToken,
  ffnParams,
  formatInfo,
  generateText,
  info,
  isGradEnabled,
  isMoe,
  layerFfn,
  memory,
  modelParams,
  needsGrad,
  noGrad,
  parameterEqual,
  record,
  resolveTrainConfig,
  validateTrainConfig,
  type BackendInfo,
  type FfnConfig,
  type ModelConfig,
  type TrainConfig,
} from '../../lib/index.js';
import { guardLeaks, loose } from '../helpers.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'sffn-api-utils-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tinyModel: ModelConfig = { vocab: 256, dModel: 16, nLayers: 1, nHeads: 2, context: 8, ffn: { kind: 'dense', dFF: 32 } };
const okTrain: TrainConfig = { model: tinyModel, steps: 10, batch: 2, lr: 1e-3 };

describe('encodeText / decodeBytes / BYTE_VOCAB', () => {
  it('BYTE_VOCAB is the 256 byte values', () => {
    expect(BYTE_VOCAB).toBe(256);
  });

  it('encodes UTF-8 bytes as Int32 ids, multi-byte characters included', () => {
    const ids = encodeText('Call me');
    expect(ids).toBeInstanceOf(Int32Array);
    expect(Array.from(ids)).toEqual([67, 97, 108, 108, 32, 109, 101]);
    expect(Array.from(encodeText('é'))).toEqual([0xc3, 0xa9]);
    expect(Array.from(encodeText('€'))).toEqual([0xe2, 0x82, 0xac]);
    expect(Array.from(encodeText('🐋'))).toEqual([0xf0, 0x9f, 0x90, 0x8b]);
    expect(encodeText('')).toHaveLength(0);
  });

  it('decodeBytes inverts encodeText (non-ASCII too) from Int32Array, Uint8Array and number[]', () => {
    const text = 'Call me Ishmael — naïve 🐋, 日本語\n';
    const ids = encodeText(text);
    expect(ids).toHaveLength(Buffer.byteLength(text, 'utf8'));
    expect(decodeBytes(ids)).toBe(text);
    expect(decodeBytes(Uint8Array.from(ids))).toBe(text);
    expect(decodeBytes(Array.from(ids))).toBe(text);
    // A Uint8Array view with an offset decodes only its own bytes.
    expect(decodeBytes(new Uint8Array([0x41, 0x42, 0x43, 0x44]).subarray(1, 3))).toBe('BC');
    expect(decodeBytes([])).toBe('');
  });

  it('invalid UTF-8 decodes to U+FFFD (generated samples may cut a character)', () => {
    expect(decodeBytes([0xc3])).toBe('\uFFFD');
    expect(decodeBytes([0xff, 0x41])).toBe('\uFFFDA');
    expect(decodeBytes(encodeText('é').subarray(0, 1))).toBe('\uFFFD');
  });

  it('rejects what is not text / not bytes, naming the argument, the expected and the actual value', () => {
    const enc = loose(encodeText);
    expect(() => enc(5)).toThrow(new TypeError('encodeText: text must be a string, got 5'));
    expect(() => enc(undefined)).toThrow(/encodeText: text must be a string, got undefined/);
    expect(() => enc(null)).toThrow(/encodeText: text must be a string, got null/);
    expect(() => enc(Buffer.from('hi'))).toThrow(/encodeText: text must be a string, got a Buffer/);

    const dec = loose(decodeBytes);
    expect(() => dec(undefined)).toThrow(TypeError);
    expect(() => dec(undefined)).toThrow(/decodeBytes: bytes must be an array-like of byte values .*got undefined/);
    expect(() => dec(5)).toThrow(/decodeBytes: bytes must be an array-like .*got 5/);
    expect(() => dec('abc')).toThrow(/decodeBytes: bytes must be an array-like .*got string 'abc'/);
    expect(() => dec({})).toThrow(/decodeBytes: bytes must be an array-like .*got an object/);
    // Out-of-range values used to wrap silently (300 → ',', -1 → 0xff); now they are errors.
    expect(() => dec([65, 300])).toThrow(new RangeError('decodeBytes: bytes[1] must be an integer in [0, 255], got 300'));
    expect(() => dec([-1])).toThrow(/bytes\[0\] must be an integer in \[0, 255\], got -1/);
    expect(() => dec([65.5])).toThrow(/bytes\[0\] must be an integer in \[0, 255\], got 65.5/);
    expect(() => dec([NaN])).toThrow(/bytes\[0\] must be an integer in \[0, 255\], got NaN/);
    expect(() => dec(Int32Array.of(72, 256))).toThrow(/bytes\[1\] must be an integer in \[0, 255\], got 256/);
    expect(() => dec(['A'])).toThrow(/bytes\[0\] must be an integer in \[0, 255\], got string 'A'/);
  });
});

describe('formatInfo', () => {
  it("describes the loaded backend: version, ISA, threads, features (info()'s values)", () => {
    const i = info();
    const s = formatInfo();
    expect(s).toBe(formatInfo(i));
    const lines = s.split('\n');
    expect(lines[0]).toBe(`sparse-ffn ${i.version} (node ${process.version}, N-API ${i.napiVersion})`);
    expect(s).toContain(`backend:  ${i.backend} — ${i.reason}`);
    expect(s).toContain(`cpu:      isa ${i.cpu.isa} (best ${i.cpu.bestIsa}), ${i.cpu.threads} threads, ${i.cpu.physicalCores} physical cores`);
    expect(s).toContain(`features: ${i.cpu.features.join(' ')}`);
    expect(['scalar', 'avx2', 'avx512']).toContain(i.cpu.isa);
    // An info() result that went through JSON (sparse-ffn info --json) formats the same.
    expect(formatInfo(JSON.parse(JSON.stringify(i)) as BackendInfo)).toBe(s);
  });

  it('formats a given BackendInfo, GPU lines included', () => {
    const fake: BackendInfo = {
      version: '9.9.9',
      backend: 'cuda',
      reason: 'forced for the test',
      binaryPath: '/x/sparse_ffn_cuda.node',
      binaryOrigin: 'prebuilt',
      napiVersion: 8,
      node: 'v20.0.0',
      cpu: { isa: 'avx2', bestIsa: 'avx512', features: ['avx2', 'fma'], threads: 3, physicalCores: 2 },
      gpu: { devices: [{ name: 'Test GPU', computeCapability: '9.0', totalMemory: 2 * 2 ** 30 }], driverVersion: 12040, runtimeVersion: 12030, archs: 'sm_90' },
      attempts: [],
    };
    expect(formatInfo(fake).split('\n')).toEqual([
      'sparse-ffn 9.9.9 (node v20.0.0, N-API 8)',
      'backend:  cuda — forced for the test',
      'binary:   /x/sparse_ffn_cuda.node (prebuilt binary)',
      'cpu:      isa avx2 (best avx512), 3 threads, 2 physical cores',
      'features: avx2 fma',
      'gpu:      Test GPU, compute 9.0, 2.0 GiB',
      'cuda:     driver 12040, runtime 12030, archs sm_90',
    ]);
  });

  it('rejects what is not a BackendInfo with a TypeError naming the missing part', () => {
    const fmt = loose(formatInfo);
    const i = info();
    expect(() => fmt(null)).toThrow(new TypeError('formatInfo: i must be a BackendInfo (the object info() returns), got null'));
    expect(() => fmt(5)).toThrow(/formatInfo: i must be a BackendInfo .*got 5/);
    expect(() => fmt('cpu')).toThrow(/formatInfo: i must be a BackendInfo .*got string 'cpu'/);
    expect(() => fmt({})).toThrow(/formatInfo: i must be a BackendInfo .*: i\.cpu must be an object, got undefined/);
    expect(() => fmt({ ...i, cpu: { ...i.cpu, features: 'avx2' } })).toThrow(/i\.cpu\.features must be an array of strings, got string 'avx2'/);
    expect(() => fmt({ ...i, gpu: {} })).toThrow(/i\.gpu must be undefined or an object with a devices array, got an object/);
  });
});

describe('validateTrainConfig', () => {
  it('accepts a good config, every optional field set', () => {
    expect(validateTrainConfig(okTrain)).toBeUndefined();
    const full: TrainConfig = {
      ...okTrain,
      data: 'moby-dick',
      minLr: 1e-5,
      warmup: 2,
      weightDecay: 0.1,
      clip: 0,
      sparseLr: 1e-2,
      seed: 0,
      evalEvery: 5,
      evalBytes: 1024,
      evalBatch: 4,
      checkpoint: path.join(dir, 'ck.safetensors'),
      checkpointEvery: 5,
      log: path.join(dir, 'log.jsonl'),
      threads: 1,
    };
    expect(() => validateTrainConfig(full)).not.toThrow();
    // Per-layer FFNs and sparse kinds are the model validator's business and pass through.
    expect(() =>
      validateTrainConfig({ ...okTrain, model: { ...tinyModel, nLayers: 2, ffn: [{ kind: 'dense', dFF: 8 }, { kind: 'sigma-moe', experts: 4, k: 2, expertSize: 4 }] } }),
    ).not.toThrow();
  });

  it('rejects each bad field with a ConfigError naming the field, the expected and the actual value', () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ steps: 0 }, /^steps must be an integer ≥ 1, got 0$/],
      [{ steps: 1.5 }, /^steps must be an integer ≥ 1, got 1.5$/],
      [{ steps: '10' }, /^steps must be an integer ≥ 1, got string '10'$/],
      [{ steps: undefined }, /^steps must be an integer ≥ 1, got undefined$/],
      [{ batch: 0 }, /^batch must be an integer ≥ 1, got 0$/],
      [{ lr: -1 }, /^lr must be a number ≥ 0, got -1$/],
      [{ lr: NaN }, /^lr must be a number ≥ 0, got NaN$/],
      [{ lr: Infinity }, /^lr must be a number ≥ 0, got Infinity$/],
      [{ minLr: -1e-3 }, /^minLr must be a number ≥ 0, got -0.001$/],
      [{ warmup: 2.5 }, /^warmup must be an integer ≥ 0, got 2.5$/],
      [{ weightDecay: -0.1 }, /^weightDecay must be a number ≥ 0, got -0.1$/],
      [{ clip: -1 }, /^clip must be a number ≥ 0, got -1$/],
      [{ sparseLr: null }, /^sparseLr must be a number ≥ 0, got null$/],
      [{ seed: -1 }, /^seed must be an integer ≥ 0, got -1$/],
      [{ evalEvery: -5 }, /^evalEvery must be an integer ≥ 0, got -5$/],
      [{ evalBytes: 0 }, /^evalBytes must be an integer ≥ 1, got 0$/],
      [{ evalBatch: 0 }, /^evalBatch must be an integer ≥ 1, got 0$/],
      [{ checkpointEvery: 1.5 }, /^checkpointEvery must be an integer ≥ 0, got 1.5$/],
      [{ threads: 0 }, /^threads must be an integer in \[1, 256\], got 0$/],
      [{ threads: 1000 }, /^threads must be an integer in \[1, 256\], got 1000$/],
      [{ data: 5 }, /^data must be a non-empty string, got 5$/],
      [{ data: '' }, /^data must be a non-empty string, got string ''$/],
      [{ checkpoint: 5 }, /^checkpoint must be a non-empty string, got 5$/],
      [{ checkpoint: path.join(dir, 'no', 'such', 'dir', 'ck.safetensors') }, /^checkpoint directory does not exist: .*no[\\/]such[\\/]dir$/],
      [{ log: true }, /^log must be a non-empty string, got boolean true$/],
      [{ model: { ...tinyModel, vocab: 128 } }, /^model\.vocab must be 256 for byte-level corpora, got 128$/],
      [{ model: { ...tinyModel, nHeads: 3 } }, /dModel must be divisible by nHeads: dModel=16, nHeads=3/],
      [{ model: undefined }, /^model config must be an object, got undefined$/],
    ];
    for (const [patch, msg] of cases) {
      const cfg = { ...okTrain, ...patch } as TrainConfig;
      let err: unknown;
      try {
        validateTrainConfig(cfg);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(patch)).toBeInstanceOf(ConfigError);
      expect((err as Error).message, JSON.stringify(patch)).toMatch(msg);
    }
    const v = loose(validateTrainConfig);
    expect(() => v(undefined)).toThrow(new ConfigError('train config must be an object, got undefined'));
    expect(() => v(null)).toThrow(/^train config must be an object, got null$/);
    expect(() => v([okTrain])).toThrow(/^train config must be an object, got an array of length 1$/);
    expect(() => v('cfg.json')).toThrow(/^train config must be an object, got string 'cfg.json'$/);
  });
});

describe('resolveTrainConfig', () => {
  it('fills in the documented defaults (evalBatch = batch) and keeps what is given, 0 included', () => {
    expect(resolveTrainConfig(okTrain)).toEqual({
      model: tinyModel,
      steps: 10,
      batch: 2,
      lr: 1e-3,
      data: 'moby-dick',
      minLr: 0,
      warmup: 0,
      weightDecay: 0,
      clip: 0.25,
      seed: 1,
      evalEvery: 0,
      evalBytes: 65536,
      evalBatch: 2,
      checkpointEvery: 0,
    });
    const r = resolveTrainConfig({ ...okTrain, clip: 0, seed: 0, evalBatch: 7, data: 'sotu', threads: 2, sparseLr: 0.01 });
    expect(r).toMatchObject({ clip: 0, seed: 0, evalBatch: 7, data: 'sotu', threads: 2, sparseLr: 0.01 });
    expect('checkpoint' in r || 'log' in r).toBe(false);
  });

  it('a field given as undefined gets its default (it used to override it with undefined)', () => {
    const input = { ...okTrain, seed: undefined, clip: undefined, evalBatch: undefined, data: undefined };
    const r = resolveTrainConfig(input);
    expect(r.seed).toBe(1);
    expect(r.clip).toBe(0.25);
    expect(r.evalBatch).toBe(2);
    expect(r.data).toBe('moby-dick');
    // The input is not modified.
    expect(input.seed).toBeUndefined();
    expect(Object.keys(input)).toEqual(['model', 'steps', 'batch', 'lr', 'seed', 'clip', 'evalBatch', 'data']);
  });

  it('validates before resolving: bad input is a ConfigError, not a TypeError from undefined', () => {
    const res = loose(resolveTrainConfig);
    expect(() => res(undefined)).toThrow(new ConfigError('train config must be an object, got undefined'));
    expect(() => res(null)).toThrow(/^train config must be an object, got null$/);
    expect(() => res(5)).toThrow(/^train config must be an object, got 5$/);
    expect(() => res({ steps: 1 })).toThrow(/^model config must be an object, got undefined$/);
    expect(() => res({ ...okTrain, batch: 0 })).toThrow(/^batch must be an integer ≥ 1, got 0$/);
  });
});

describe('compareConfigs / PRESETS / DEFAULT_KINDS', () => {
  it('DEFAULT_KINDS are the five kinds compare trains; PRESETS are quick and small over one dense FFN', () => {
    expect(DEFAULT_KINDS).toEqual(['dense', 'sigma-moe', 'switch', 'pkm', 'peer']);
    for (const k of DEFAULT_KINDS) expect(FFN_KINDS).toContain(k);
    expect(Object.keys(PRESETS)).toEqual(['quick', 'small']);
    expect(PRESETS.quick.base).toEqual({ vocab: 256, dModel: 128, nLayers: 4, nHeads: 4, context: 128, dropout: 0, ffn: { kind: 'dense', dFF: 1024 } });
    expect(PRESETS.quick.sparse).toMatchObject({ experts: 16, k: 4 });
    for (const [name, p] of Object.entries(PRESETS)) {
      expect(Array.isArray(p.base.ffn), name).toBe(false);
      expect((p.base.ffn as FfnConfig).kind, name).toBe('dense');
      // What runCompare validates before training anything.
      for (const m of compareConfigs(p.base, DEFAULT_KINDS, p.sparse)) expect(() => validateTrainConfig({ ...p.train, model: m.config }), `${name} ${m.name}`).not.toThrow();
    }
  });

  it("gives the quick preset's models: the σ-MoE pair's dense twin, then each sparse kind", () => {
    const { base, sparse } = PRESETS.quick;
    const models = compareConfigs(base, DEFAULT_KINDS, sparse);
    expect(models.map((m) => m.name)).toEqual(DEFAULT_KINDS);
    expect(models.map((m) => m.kind)).toEqual(DEFAULT_KINDS);
    expect(models.map((m) => m.config.ffn)).toEqual([
      // d_ff = round((2·128·1024 + 16·128 − 128) / (2·128 + 1)) = round(264064 / 257) = 1027
      { kind: 'dense', dFF: 1027 },
      // E·G = 16·64 = 1024: the experts hold the dense FFN's weights; K/E = 1/4
      { kind: 'sigma-moe', experts: 16, k: 4, expertSize: 64, gamma: 0.001, expertDropout: 0 },
      // E/K = 4 experts of K·G = 256 channels, top-1
      { kind: 'switch', experts: 4, k: 1, expertSize: 256, capacityFactor: 1.25, balance: 0.01 },
      { kind: 'pkm', variant: 'csordas', heads: 4, subKeys: 43, k: 8 },
      { kind: 'peer', heads: 4, subKeys: 30, k: 8, queryDim: 64 },
    ]);
    // Everything but the FFN is the base's.
    for (const m of models) expect({ ...m.config, ffn: null }).toEqual({ ...base, ffn: null });
    expect(models[0].config).toEqual(parameterEqual(base, 'sigma-moe', sparse).dense);
  });

  it('the sparse models are parameter-equal to the dense twin (closed-form counts)', () => {
    const { base, sparse } = PRESETS.quick;
    const [dense, sigma, sw, pkm, peer] = compareConfigs(base, DEFAULT_KINDS, sparse).map((m) => m.config);
    const D = 128;
    const L = 4;
    // embedding + head (W and bias) + final norm, and per layer attention (4D² + 4D norms) + FFN
    const shared = 256 * D * 2 + 256 + 2 * D + L * (4 * D * D + 4 * D);
    expect(modelParams(dense)).toBe(shared + L * (2 * D * 1027 + 1027 + D));
    expect(modelParams(sigma)).toBe(shared + L * (2 * 16 * D * 64 + 16 * D));
    expect(modelParams(dense)).toBe(1_386_508);
    expect(modelParams(sigma)).toBe(1_387_008);
    // σ-MoE: equal up to the rounding of d_ff, at most half a channel (2D + 1 parameters) per layer.
    expect(Math.abs(modelParams(sigma) - modelParams(dense))).toBeLessThanOrEqual((L * (2 * D + 1)) / 2);
    // Switch: the same expert weights, a selector of E/K = 4 rows instead of 16.
    expect(modelParams(sigma) - modelParams(sw)).toBe(L * (16 - 4) * D);
    // PKM / PEER: the sub-key count whose table is closest to the dense FFN; within 2% of the dense twin.
    const target = ffnParams(D, { kind: 'dense', dFF: 1024 });
    const pkmAt = (n: number): number => ffnParams(D, { kind: 'pkm', variant: 'csordas', heads: 4, subKeys: n, k: 8 });
    expect(Math.abs(pkmAt(43) - target)).toBeLessThan(Math.abs(pkmAt(42) - target));
    expect(Math.abs(pkmAt(43) - target)).toBeLessThan(Math.abs(pkmAt(44) - target));
    for (const m of [sw, pkm, peer]) expect(Math.abs(modelParams(m) - modelParams(dense)) / modelParams(dense)).toBeLessThan(0.02);
  });

  it('follows the order of kinds; sparse options default to the paper setting (E = 16, K = E/4)', () => {
    const base: ModelConfig = { vocab: 256, dModel: 32, nLayers: 2, nHeads: 2, context: 16, ffn: { kind: 'dense', dFF: 128 } };
    expect(compareConfigs(base, ['peer', 'dense'], {}).map((m) => m.name)).toEqual(['peer', 'dense']);
    expect(compareConfigs(base, [], {})).toEqual([]);
    expect(compareConfigs(base, ['sigma-moe']).map((m) => m.config.ffn)).toEqual([{ kind: 'sigma-moe', experts: 16, k: 4, expertSize: 8, gamma: 0.001, expertDropout: 0 }]);
    expect(compareConfigs(base, ['sigma-moe'], { experts: 8, k: 2 })[0].config.ffn).toMatchObject({ experts: 8, k: 2, expertSize: 16 });
  });

  it('rejects bad kinds, sparse options and base configs with ConfigErrors naming them', () => {
    const cc = loose(compareConfigs);
    const { base, sparse } = PRESETS.quick;
    expect(() => cc(base, 'dense', sparse)).toThrow(new ConfigError("compareConfigs: kinds must be an array of FFN kinds, got string 'dense'"));
    expect(() => cc(base, undefined, sparse)).toThrow(/compareConfigs: kinds must be an array of FFN kinds, got undefined/);
    expect(() => cc(base, ['dense', 'mlp'], sparse)).toThrow(/compareConfigs: kinds\[1\] must be one of dense, topk, sigma-moe, .*peer, got string 'mlp'/);
    expect(() => cc(base, ['dense'], null)).toThrow(/compareConfigs: sparse must be an object \(SparseOptions\), got null/);
    expect(() => cc(base, ['dense'], 16)).toThrow(/compareConfigs: sparse must be an object \(SparseOptions\), got 16/);
    expect(() => cc(base, ['sigma-moe'], { experts: '16' })).toThrow(/compareConfigs: sparse\.experts must be a positive integer, got string '16'/);
    expect(() => cc(base, ['sigma-moe'], { k: 0 })).toThrow(/compareConfigs: sparse\.k must be a positive integer, got 0/);
    expect(() => cc(base, ['pkm'], { pkmK: 1.5 })).toThrow(/compareConfigs: sparse\.pkmK must be a positive integer, got 1.5/);
    expect(() => cc(base, ['peer'], { peerHeads: -2 })).toThrow(/compareConfigs: sparse\.peerHeads must be a positive integer, got -2/);
    expect(() => cc(base, ['sigma-moe'], { gamma: -1 })).toThrow(/compareConfigs: sparse\.gamma must be a finite number ≥ 0, got -1/);
    expect(() => cc(base, ['sigma-moe'], { expertDropout: 1 })).toThrow(/compareConfigs: sparse\.expertDropout must be in \[0, 1\), got 1/);
    expect(() => cc(base, ['sigma-moe'], { experts: 3 })).toThrow(/parameterEqual: dFF=1024 must be divisible by experts=3/);
    expect(() => cc(null, ['dense'], sparse)).toThrow(/model config must be an object, got null/);
    expect(() => cc({ ...base, ffn: { kind: 'sigma-moe', experts: 4, k: 1, expertSize: 8 } }, ['dense'], sparse)).toThrow(/one dense FFN for every layer/);
    for (const bad of [() => cc(base, ['x'], sparse), () => cc(base, ['dense'], null), () => cc(null, ['dense'], sparse)]) expect(bad).toThrow(ConfigError);
  });
});

describe('isGradEnabled / needsGrad / record', () => {
  guardLeaks();

  it('isGradEnabled: on by default, off inside noGrad (nested too), restored after a throw', () => {
    expect(isGradEnabled()).toBe(true);
    expect(noGrad(() => isGradEnabled())).toBe(false);
    expect(noGrad(() => noGrad(() => isGradEnabled()))).toBe(false);
    expect(noGrad(() => (noGrad(() => 1), isGradEnabled()))).toBe(false);
    expect(() =>
      noGrad(() => {
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(isGradEnabled()).toBe(true);
  });

  it('needsGrad: true when an input requires grad or came from a recorded op, and grad is on', () => {
    const w = new Variable(Tensor.from([1, 2]), { requiresGrad: true });
    const c = new Variable(Tensor.from([3, 4]));
    expect(needsGrad(w)).toBe(true);
    expect(needsGrad(c)).toBe(false);
    expect(needsGrad()).toBe(false);
    expect(needsGrad(null, undefined)).toBe(false);
    expect(needsGrad(c, null, w)).toBe(true);
    expect(noGrad(() => needsGrad(w))).toBe(false);
    // An op output that does not itself require grad but is on the tape.
    const [y] = record('copy', [w], [w.data.clone()], (g) => [g[0]!.clone()]);
    expect(y.requiresGrad).toBe(false);
    expect(y.isLeaf).toBe(false);
    expect(needsGrad(y)).toBe(true);
    const seed = Tensor.from([1, 1]);
    y.backward(seed);
    expect(Array.from(w.grad!.data() as Float32Array)).toEqual([1, 1]);
    seed.dispose();
    w.dispose();
    c.dispose();
    y.dispose();
  });

  it('record puts a node on the tape whose backward .backward() calls with the output gradients', () => {
    const x = new Variable(Tensor.from([1, 2, 3]), { requiresGrad: true });
    const saved = Tensor.from([10, 20, 30]);
    const calls: (number[] | null)[][] = [];
    // y1 = 2x, y2 = 3x; backward: dx = 2·dy1 + 3·dy2 (an absent gradient counts as 0)
    const outs = record(
      'twoScales',
      [x, null],
      [Tensor.from([2, 4, 6]), Tensor.from([3, 6, 9])],
      (gs) => {
        calls.push(gs.map((g) => (g ? Array.from(g.data() as Float32Array) : null)));
        const dx = new Float32Array(3);
        gs.forEach((g, j) => {
          if (g) (g.data() as Float32Array).forEach((v, i) => (dx[i] += (j === 0 ? 2 : 3) * v));
        });
        return [Tensor.fromHost(dx, [3]), null];
      },
      [saved],
    );
    expect(outs).toHaveLength(2);
    const [y1, y2] = outs;
    expect(Array.from(y1.data.data() as Float32Array)).toEqual([2, 4, 6]);
    const node = y1.node!;
    expect(node).not.toBeNull();
    expect(y2.node).toBe(node);
    expect(node.op).toBe('twoScales');
    expect(node.inputs).toHaveLength(2);
    expect(node.inputs[0]).toBe(x);
    expect(node.inputs[1]).toBeNull();
    expect(node.outputs[0]).toBe(y1);
    expect(node.outputs[1]).toBe(y2);
    expect(node.saved).toHaveLength(1);
    expect(node.saved[0]).toBe(saved);
    expect(calls).toHaveLength(0);
    // Only y1 gets a gradient: the node sees [seed, null].
    const seed = Tensor.from([1, 0.5, -1]);
    y1.backward(seed);
    seed.dispose();
    expect(calls).toEqual([[[1, 0.5, -1], null]]);
    expect(Array.from(x.grad!.data() as Float32Array)).toEqual([2, 1, -2]);
    // backward freed the node: saved tensors, the closure, the non-root outputs' values.
    expect(saved.isDisposed).toBe(true);
    expect(node.backward).toBeNull();
    expect(node.saved).toEqual([]);
    expect(y2.data.isDisposed).toBe(true);
    expect(y1.node).toBeNull();
    y1.dispose();
    x.dispose();
  });

  it('record records nothing (and frees `saved` at once) when no input needs grad or under noGrad', () => {
    const w = new Variable(Tensor.from([1]), { requiresGrad: true });
    const c = new Variable(Tensor.from([1]));
    const s1 = Tensor.from([0]);
    const never = (): never => {
      throw new Error('backward must not run');
    };
    const [a] = record('const', [c], [Tensor.from([5])], never, [s1]);
    expect(a.node).toBeNull();
    expect(a.isLeaf).toBe(true);
    expect(s1.isDisposed).toBe(true);
    expect(a.data.item()).toBe(5);
    const s2 = Tensor.from([0]);
    const [b] = noGrad(() => record('noGrad', [w], [Tensor.from([6])], never, [s2]));
    expect(b.node).toBeNull();
    expect(s2.isDisposed).toBe(true);
    for (const v of [w, c, a, b]) v.dispose();
  });

  it('bad arguments are TypeErrors naming the argument, not crashes or silent garbage', () => {
    const ng = loose(needsGrad);
    // A plain object used to count as "needs grad" (its .node is undefined, not null).
    expect(() => ng({ requiresGrad: true })).toThrow(new TypeError('needsGrad: inputs[0] must be a Variable, null or undefined, got an object'));
    expect(() => ng(null, 5)).toThrow(/needsGrad: inputs\[1\] must be a Variable, null or undefined, got 5/);
    const t = Tensor.from([1]);
    expect(() => ng(t)).toThrow(/needsGrad: inputs\[0\] must be a Variable, null or undefined, got a Tensor/);

    const rec = loose(record);
    const v = new Variable(Tensor.from([1]), { requiresGrad: true });
    const fn = (): Tensor[] => [];
    expect(() => rec(5, [v], [t], fn)).toThrow(new TypeError("record: op must be a non-empty string (the op's name), got 5"));
    expect(() => rec('', [v], [t], fn)).toThrow(/record: op must be a non-empty string .*got string ''/);
    expect(() => rec()).toThrow(/record: op must be a non-empty string .*got undefined/);
    expect(() => rec('op', null, [t], fn)).toThrow(/record\(op\): inputs must be an array of Variables \(or null\), got null/);
    expect(() => rec('op', [v, 5], [t], fn)).toThrow(/record\(op\): inputs\[1\] must be a Variable, null or undefined, got 5/);
    expect(() => rec('op', [v], undefined, fn)).toThrow(/record\(op\): outputs must be an array of Tensors, got undefined/);
    expect(() => rec('op', [v], [t, [1, 2]], fn)).toThrow(/record\(op\): outputs\[1\] must be a Tensor, got an array of length 2/);
    // A missing backward used to be recorded and fail only at .backward() ("node op was already freed").
    expect(() => rec('op', [v], [t], null)).toThrow(/record\(op\): backward must be a function, got null/);
    expect(() => rec('op', [v], [t], fn, null)).toThrow(/record\(op\): saved must be an array of Tensors, got null/);
    expect(() => rec('op', [v], [t], fn, [{}])).toThrow(/record\(op\): saved\[0\] must be a Tensor, got an object/);
    for (const bad of [() => rec('op', [v], [t], 'fn'), () => rec('op', [v], [5], fn)]) expect(bad).toThrow(TypeError);
    // Nothing was recorded by the failed calls.
    expect(v.node).toBeNull();
    expect(t.isDisposed).toBe(false);
    t.dispose();
    v.dispose();
  });
});

describe('FFN_KINDS / isMoe / layerFfn / ffnFlopsPerToken', () => {
  it('FFN_KINDS lists the eight kinds; isMoe picks the four routed-expert ones', () => {
    expect(FFN_KINDS).toEqual(['dense', 'topk', 'sigma-moe', 'switch', 'softmax-moe', 'adaptive', 'pkm', 'peer']);
    const example = (kind: (typeof FFN_KINDS)[number]): FfnConfig => ({ kind, experts: 4, k: 1, expertSize: 8, dFF: 8, heads: 1, subKeys: 4 }) as FfnConfig;
    expect(FFN_KINDS.filter((k) => isMoe(example(k)))).toEqual(['sigma-moe', 'switch', 'softmax-moe', 'adaptive']);
    expect(isMoe({ kind: 'dense', dFF: 64 })).toBe(false);
    expect(isMoe({ kind: 'sigma-moe', experts: 16, k: 4, expertSize: 32 })).toBe(true);
  });

  it('layerFfn: one config for every layer, or the l-th of a per-layer list', () => {
    const one: FfnConfig = { kind: 'dense', dFF: 64 };
    const single: ModelConfig = { ...tinyModel, nLayers: 3, ffn: one };
    for (let l = 0; l < 3; l++) expect(layerFfn(single, l)).toBe(one);
    const list: FfnConfig[] = [
      { kind: 'dense', dFF: 32 },
      { kind: 'sigma-moe', experts: 4, k: 2, expertSize: 8 },
      { kind: 'pkm', heads: 2, subKeys: 4, k: 2 },
    ];
    const perLayer: ModelConfig = { ...tinyModel, nLayers: 3, ffn: list };
    expect([0, 1, 2].map((l) => layerFfn(perLayer, l))).toEqual(list);
    expect(layerFfn(perLayer, 1)).toBe(list[1]);
  });

  it('ffnFlopsPerToken: the closed forms (2 FLOPs per multiply-add, selector included)', () => {
    const D = 128;
    // dense: x·W1 [D, F] and h·W2 [F, D]: 2·(D·F + F·D) = 4·D·F
    expect(ffnFlopsPerToken(D, { kind: 'dense', dFF: 1024 })).toBe(4 * 128 * 1024);
    expect(ffnFlopsPerToken(D, { kind: 'dense', dFF: 1024 })).toBe(524_288);
    // σ-MoE: selector x·W_S [D, E] = 2·D·E, plus K experts of width G, 4·D·G each
    const sigma: FfnConfig = { kind: 'sigma-moe', experts: 16, k: 4, expertSize: 64 };
    expect(ffnFlopsPerToken(D, sigma)).toBe(2 * 128 * 16 + 4 * 128 * 4 * 64);
    expect(ffnFlopsPerToken(D, sigma)).toBe(135_168);
    // Switch top-1 of E/K = 4 experts of 256: the same expert FLOPs, a smaller selector.
    expect(ffnFlopsPerToken(D, { kind: 'switch', experts: 4, k: 1, expertSize: 256 })).toBe(2 * 128 * 4 + 4 * 128 * 256);
    // Top-K activation: the full up-projection, only K channels down.
    expect(ffnFlopsPerToken(D, { kind: 'topk', dFF: 1024, k: 256 })).toBe(2 * 128 * 1024 + 2 * 128 * 256);
    // K/E = 1/4 of the dense FFN plus the selector: just over a quarter.
    expect(ffnFlopsPerToken(D, sigma) / ffnFlopsPerToken(D, { kind: 'dense', dFF: 1024 })).toBeCloseTo(0.2578125, 10);
  });

  it('rejects bad arguments with ConfigErrors naming the function, the argument and the value', () => {
    const cfg = { vocab: 256, dModel: 16, nLayers: 2, nHeads: 2, context: 8, ffn: { kind: 'dense', dFF: 32 } } as const;
    const base = { ...cfg, ffn: { kind: 'dense', dFF: 64 } } as const;
    const cases: [() => unknown, string][] = [
      [() => isMoe(null as unknown as FfnConfig), 'isMoe: f must be an FFN config, got null'],
      [() => layerFfn(undefined as unknown as typeof cfg, 0), 'layerFfn: cfg must be a model config, got undefined'],
      [() => layerFfn(cfg, 2), 'layerFfn: l must be an integer in [0, nLayers=2), got 2'],
      [() => layerFfn({ ...cfg, ffn: [cfg.ffn] }, 1), 'layerFfn: l must be an integer in [0, ffn.length=1), got 1'],
      [() => layerFfn(cfg, '0' as unknown as number), "layerFfn: l must be an integer in [0, nLayers=2), got string '0'"],
      [() => ffnFlopsPerToken(16, { kind: 'x' } as unknown as FfnConfig), "ffnFlopsPerToken: f.kind: unknown FFN kind 'x', expected one of " + FFN_KINDS.join(', ')],
      [() => ffnFlopsPerToken('16' as unknown as number, cfg.ffn), "ffnFlopsPerToken: f: the model width D must be a positive integer, got string '16'"],
      [() => ffnFlopsPerToken(16, { kind: 'sigma-moe', experts: '4', k: 1, expertSize: 8 } as unknown as FfnConfig), "ffnFlopsPerToken: f.experts must be a positive integer, got string '4'"],
      [() => parameterEqual(base, 'sigma-moe', null as unknown as object), 'parameterEqual: opts must be an object (SparseOptions), got null'],
      [() => parameterEqual(base, 'sigma-moe', { experts: 0 }), 'parameterEqual: opts.experts must be a positive integer, got 0'],
      [() => parameterEqual(base, 'sigma-moe', { expertDropout: 1 }), 'parameterEqual: opts.expertDropout must be in [0, 1), got 1'],
    ];
    for (const [f, msg] of cases) {
      expect(f, msg).toThrow(ConfigError);
      expect(f, msg).toThrow(new ConfigError(msg));
    }
  });
});

describe('generateText', () => {
  guardLeaks();
  let m: TransformerLM;
  let ascii: TransformerLM;
  beforeAll(() => {
    m = new TransformerLM(tinyModel, { seed: 1 });
    // vocab 128: every sampled id is ASCII, so the decoded text has exactly one character per generated byte.
    ascii = new TransformerLM({ ...tinyModel, vocab: 128 }, { seed: 2 });
  });
  afterAll(() => {
    m.dispose();
    ascii.dispose();
  });

  it('greedy generation is the argmax of nextLogits over the last `context` bytes, n bytes long', () => {
    const n = 12;
    const ids = Array.from(encodeText('Call me'));
    const expected: number[] = [];
    for (let i = 0; i < n; i++) {
      const logits = m.nextLogits(Int32Array.from(ids.slice(-8)));
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      ids.push(best);
      expected.push(best);
    }
    expect(expected).toHaveLength(n);
    expect(generateText(m, 'Call me', n, 8, { temperature: 0 })).toBe(decodeBytes(expected));
  });

  it('sampling with a seed is deterministic and gives exactly n bytes', () => {
    const a = generateText(ascii, 'Call me ', 24, 8, { seed: 7, temperature: 1 });
    expect(a).toHaveLength(24);
    expect(Buffer.byteLength(a, 'utf8')).toBe(24);
    expect([...a].every((ch) => ch.charCodeAt(0) < 128)).toBe(true);
    expect(generateText(ascii, 'Call me ', 24, 8, { seed: 7, temperature: 1 })).toBe(a);
    // A fresh model with the same init seed generates the same text; another sampling seed does not.
    const twin = new TransformerLM({ ...tinyModel, vocab: 128 }, { seed: 2 });
    expect(generateText(twin, 'Call me ', 24, 8, { seed: 7, temperature: 1 })).toBe(a);
    twin.dispose();
    expect(generateText(ascii, 'Call me ', 24, 8, { seed: 8, temperature: 1 })).not.toBe(a);
    // Top-p keeps determinism too.
    expect(generateText(ascii, 'x', 10, 8, { seed: 3, topP: 0.5 })).toBe(generateText(ascii, 'x', 10, 8, { seed: 3, topP: 0.5 }));
    expect(generateText(ascii, 'x', 0, 8)).toBe('');
  });

  it('uses only the last `context` bytes; an empty prompt stands for "\\n"; the training mode is restored', () => {
    expect(generateText(ascii, 'abcdefghij', 6, 4, { seed: 3 })).toBe(generateText(ascii, 'ghij', 6, 4, { seed: 3 }));
    expect(generateText(ascii, 'abcdefghij', 6, 8, { seed: 3 })).not.toBe(generateText(ascii, 'ghij', 6, 8, { seed: 3 }));
    expect(generateText(ascii, '', 5, 8, { seed: 4 })).toBe(generateText(ascii, '\n', 5, 8, { seed: 4 }));
    ascii.train();
    generateText(ascii, 'a', 2, 8);
    expect(ascii.training).toBe(true);
    ascii.eval();
    generateText(ascii, 'a', 2, 8);
    expect(ascii.training).toBe(false);
    ascii.train();
  });

  it('rejects bad arguments, naming the argument, the expected and the actual value', () => {
    const gen = loose(generateText);
    expect(() => gen({}, 'a', 3, 8)).toThrow(new TypeError('generateText: model must be a TransformerLM, got an object'));
    expect(() => gen(undefined, 'a', 3, 8)).toThrow(/generateText: model must be a TransformerLM, got undefined/);
    expect(() => gen(m, 5, 3, 8)).toThrow(new TypeError('generateText: prompt must be a string, got 5'));
    expect(() => gen(m)).toThrow(/generateText: prompt must be a string, got undefined/);
    expect(() => gen(m, 'a', -1, 8)).toThrow(new RangeError('generateText: n (bytes to generate) must be an integer ≥ 0, got -1'));
    expect(() => gen(m, 'a', 1.5, 8)).toThrow(/n \(bytes to generate\) must be an integer ≥ 0, got 1.5/);
    expect(() => gen(m, 'a', '3', 8)).toThrow(/n \(bytes to generate\) must be an integer ≥ 0, got string '3'/);
    expect(() => gen(m, 'a', NaN, 8)).toThrow(/n \(bytes to generate\) must be an integer ≥ 0, got NaN/);
    expect(() => gen(m, 'a', 3, 0)).toThrow(new RangeError('generateText: context must be an integer in [1, model.config.context=8], got 0'));
    expect(() => gen(m, 'a', 3, 9)).toThrow(/context must be an integer in \[1, model\.config\.context=8\], got 9/);
    expect(() => gen(m, 'a', 3, 8.5)).toThrow(/context must be an integer in \[1, model\.config\.context=8\], got 8.5/);
    expect(() => gen(m, 'a', 3)).toThrow(/context must be an integer in \[1, model\.config\.context=8\], got undefined/);
    expect(() => gen(m, 'a', 3, 8, null)).toThrow(new TypeError('generateText: opts must be an object, got null'));
    expect(() => gen(m, 'a', 3, 8, { seed: 'x' })).toThrow(/generateText: opts\.seed must be an integer, got string 'x'/);
    expect(() => gen(m, 'a', 3, 8, { seed: 1.5 })).toThrow(/generateText: opts\.seed must be an integer, got 1.5/);
    expect(() => gen(m, 'a', 0, 8, { temperature: -1 })).toThrow(/generateText: opts\.temperature must be a number ≥ 0, got -1/);
    expect(() => gen(m, 'a', 3, 8, { topP: 0 })).toThrow(/generateText: opts\.topP must be a number in \(0, 1\], got 0/);
    expect(() => gen(m, 'a', 3, 8, { topP: 1.5 })).toThrow(/opts\.topP must be a number in \(0, 1\], got 1.5/);
    // Prompt bytes the model cannot embed, and vocabularies that are not bytes.
    expect(() => gen(ascii, 'ok é', 3, 8)).toThrow(new RangeError("generateText: prompt byte 195 at offset 3 is outside the model's vocabulary [0, 128)"));
    const wide = new TransformerLM({ ...tinyModel, vocab: 300 }, { seed: 1 });
    try {
      expect(() => gen(wide, 'a', 3, 8)).toThrow(new ConfigError('generateText: model.config.vocab must be ≤ 256 (byte ids), got 300'));
    } finally {
      wide.dispose();
    }
    const before = memory();
    expect(() => gen(m, 'a', 3, 8, { temperature: NaN })).toThrow(RangeError);
    expect(memory()).toEqual(before);
  });
});
