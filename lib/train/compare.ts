/**
 * The parameter-equal comparison (the σ-MoE paper's protocol at small scale, methods.md §1.11): a dense
 * model and, at the same total parameter count, σ-MoE (K/E = 1/4), Switch (top-1, E/K experts of K·G,
 * capacity 1.25), PKM (Csordás variant) and PEER, trained on the same data with the same seed, steps, batch
 * and schedule. Prints one table (valid bits per byte, parameters, FFN share of FLOPs, tokens/s, peak tensor
 * memory, expert usage) and writes an SVG with the loss curves and expert-usage histograms plus a JSON file.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { getNumThreads } from '../info.js';
import { type FfnKind, type ModelConfig, type SparseOptions, FFN_KINDS, checkSparseOptions, parameterEqual, modelFlopsPerToken, modelParams, ConfigError } from '../nn/config.js';
import { loadCorpus, type Corpus } from '../data/corpus.js';
import { isObject, showValue } from '../errors.js';
import { Trainer, checkCorpus, validateTrainConfig, type TrainConfig, type LayerUsage } from './trainer.js';
import { Progress } from './log.js';
import { compareSvg, type Histogram, type Series } from './plot.js';

export interface ComparePreset {
  base: ModelConfig;
  sparse: SparseOptions;
  train: Omit<TrainConfig, 'model'>;
}

/**
 * Presets. `quick` is what `npm start` runs: it finishes all five models in well under 15 minutes on two
 * cores. `small` is a longer run for more trustworthy numbers.
 */
export const PRESETS: Record<string, ComparePreset> = {
  quick: {
    // d_ff = 8·D rather than 4·D: the σ-MoE paper finds that K·G (the channels active per token) must stay at
    // about 256 or more (methods notes §1.11). With d_ff = 512 and K/E = 1/4, K·G is only 128 whatever E is, and
    // σ-MoE trailed dense by 0.026 bits/byte (E=8, K=2, G=64) at this budget; with d_ff = 1024, E = 16 experts
    // of G = 64, K = 4 (K·G = 256) it matched or beat it. The dense twin is hardly affected (2.4022 vs 2.4019).
    base: { vocab: 256, dModel: 128, nLayers: 4, nHeads: 4, context: 128, dropout: 0, ffn: { kind: 'dense', dFF: 1024 } },
    sparse: { experts: 16, k: 4, gamma: 0.001, expertDropout: 0, pkmHeads: 4, pkmK: 8, peerHeads: 4, peerK: 8 },
    train: { steps: 600, batch: 16, lr: 2e-3, warmup: 30, clip: 0.25, seed: 1, evalEvery: 100, evalBytes: 32768 },
  },
  small: {
    base: { vocab: 256, dModel: 256, nLayers: 6, nHeads: 8, context: 256, dropout: 0, ffn: { kind: 'dense', dFF: 1024 } },
    sparse: { experts: 16, k: 4, gamma: 0.001, expertDropout: 0.05, pkmHeads: 4, pkmK: 16, peerHeads: 8, peerK: 8 },
    train: { steps: 2000, batch: 16, lr: 1e-3, warmup: 100, clip: 0.25, seed: 1, evalEvery: 200, evalBytes: 131072 },
  },
};

export const DEFAULT_KINDS: FfnKind[] = ['dense', 'sigma-moe', 'switch', 'pkm', 'peer'];

export interface CompareRow {
  name: string;
  kind: FfnKind;
  params: number;
  ffnFlopsShare: number;
  /** FFN forward FLOPs per token relative to the dense model's FFN. */
  ffnFlopsVsDense: number;
  validBpb: number;
  tokensPerSecond: number;
  peakTensorBytes: number;
  usage: LayerUsage[];
  seconds: number;
  curve: { step: number; bpb: number }[];
  valid: { step: number; bpb: number }[];
  config: ModelConfig;
}

export interface CompareOptions {
  preset?: string;
  kinds?: FfnKind[];
  steps?: number;
  data?: string;
  outDir?: string;
  corpus?: Corpus;
  quiet?: boolean;
  /** Override training fields of the preset. */
  train?: Partial<Omit<TrainConfig, 'model'>>;
  /** Override the base model of the preset. */
  base?: Partial<ModelConfig>;
  log?: (line: string) => void;
}

/** Checks compareConfigs' kinds and sparse options (the base config is checked by parameterEqual). */
function checkCompareArgs(kinds: unknown, sparse: unknown): void {
  if (!Array.isArray(kinds)) throw new ConfigError(`compareConfigs: kinds must be an array of FFN kinds, got ${showValue(kinds)}`);
  kinds.forEach((k, i) => {
    if (!(FFN_KINDS as readonly unknown[]).includes(k))
      throw new ConfigError(`compareConfigs: kinds[${i}] must be one of ${FFN_KINDS.join(', ')}, got ${showValue(k)}`);
  });
  checkSparseOptions(sparse, 'compareConfigs: sparse');
}

/** The model configs compare trains, in order: dense twin first, then each sparse kind at equal parameters. */
export function compareConfigs(base: ModelConfig, kinds: FfnKind[], sparse: SparseOptions = {}): { name: string; kind: FfnKind; config: ModelConfig }[] {
  checkCompareArgs(kinds, sparse);
  // The dense twin is the σ-MoE pair's (d_ff grown by the selector's parameters), as in the paper.
  const denseTwin = parameterEqual(base, 'sigma-moe', sparse).dense;
  return kinds.map((kind) => {
    if (kind === 'dense') return { name: 'dense', kind, config: denseTwin };
    const p = parameterEqual(base, kind, sparse);
    return { name: kind, kind, config: p.sparse };
  });
}

/** Checks runCompare's options (types only; the configs they build are validated before any training). */
function checkCompareOptions(opts: unknown): asserts opts is CompareOptions {
  const op = 'runCompare';
  if (!isObject(opts)) throw new ConfigError(`${op}: opts must be an object (CompareOptions), got ${showValue(opts)}`);
  const o = opts as Record<string, unknown>;
  for (const f of ['preset', 'data', 'outDir'] as const)
    if (o[f] !== undefined && (typeof o[f] !== 'string' || o[f] === '')) throw new ConfigError(`${op}: opts.${f} must be a non-empty string, got ${showValue(o[f])}`);
  if (o.steps !== undefined && (typeof o.steps !== 'number' || !Number.isSafeInteger(o.steps) || o.steps < 0))
    throw new ConfigError(`${op}: opts.steps must be an integer ≥ 1 (0: the preset's), got ${showValue(o.steps)}`);
  if (o.quiet !== undefined && typeof o.quiet !== 'boolean') throw new ConfigError(`${op}: opts.quiet must be a boolean, got ${showValue(o.quiet)}`);
  for (const f of ['train', 'base'] as const)
    if (o[f] !== undefined && !isObject(o[f])) throw new ConfigError(`${op}: opts.${f} must be an object, got ${showValue(o[f])}`);
  if (o.log !== undefined && typeof o.log !== 'function') throw new ConfigError(`${op}: opts.log must be a function (line: string) => void, got ${showValue(o.log)}`);
  if (o.corpus !== undefined) checkCorpus(o.corpus, `${op}: opts.corpus`);
}

export function runCompare(opts: CompareOptions = {}): { rows: CompareRow[]; svg?: string; json?: string; table: string } {
  checkCompareOptions(opts);
  const log = opts.log ?? ((s: string) => console.log(s));
  const presetName = opts.preset ?? 'quick';
  const preset = Object.hasOwn(PRESETS, presetName) ? PRESETS[presetName] : undefined;
  if (!preset) throw new ConfigError(`compare: unknown preset '${presetName}', expected one of ${Object.keys(PRESETS).join(', ')}`);
  const base: ModelConfig = { ...preset.base, ...opts.base };
  const train = { ...preset.train, ...(opts.data ? { data: opts.data } : {}), ...(opts.steps ? { steps: opts.steps } : {}), ...opts.train };
  const kinds = opts.kinds ?? DEFAULT_KINDS;
  const models = compareConfigs(base, kinds, preset.sparse);
  if (!models.length) throw new ConfigError('compare: kinds must list at least one FFN kind, got an empty array');
  // Validate everything (configs and data) before the first step of the first model.
  for (const m of models) validateTrainConfig({ ...train, model: m.config });
  const corpus = opts.corpus ?? loadCorpus(train.data ?? 'moby-dick', { minBytes: base.context + 1 });
  // FLOPs relative to the dense twin's FFN, whether or not the dense model is among the kinds trained.
  const denseFfn = modelFlopsPerToken(compareConfigs(base, ['dense'], preset.sparse)[0].config).ffn;
  log(
    `compare (${presetName}): ${corpus.name} (${(corpus.train.length / 1e6).toFixed(2)} MB train), D=${base.dModel}, ${base.nLayers} layers, context ${base.context}, ` +
      `${train.steps} steps × batch ${train.batch}, ${getNumThreads()} threads`,
  );
  const rows: CompareRow[] = [];
  for (const m of models) {
    const t = new Trainer({ ...train, model: m.config }, { corpus });
    let peak = 0;
    const progress = opts.quiet ? false : new Progress(t.config.steps, { label: m.name.padEnd(9) });
    const t0 = performance.now();
    const final = t.run({ progress, quiet: true });
    peak = t.peakTensorBytes;
    const seconds = (performance.now() - t0) / 1000;
    const trainMs = t.history.reduce((a, h) => a + h.ms, 0);
    const tokens = t.history.reduce((a, h) => a + h.tokens, 0);
    const usage = t.usage();
    const fl = modelFlopsPerToken(m.config);
    rows.push({
      name: m.name,
      kind: m.kind,
      params: modelParams(m.config),
      ffnFlopsShare: fl.ffn / fl.total,
      ffnFlopsVsDense: fl.ffn / denseFfn,
      validBpb: final.bpb,
      tokensPerSecond: tokens / (trainMs / 1000),
      peakTensorBytes: peak,
      usage,
      seconds,
      curve: t.history.map((h) => ({ step: h.step, bpb: h.bpb })),
      valid: t.evals.map((e) => ({ step: e.step, bpb: e.bpb })),
      config: m.config,
    });
    if (!opts.quiet) log(`${m.name}: valid ${final.bpb.toFixed(4)} bits/byte in ${seconds.toFixed(0)} s`);
    t.dispose();
  }
  const table = formatCompareTable(rows);
  log('\n' + table);
  let svg: string | undefined;
  let json: string | undefined;
  if (opts.outDir) {
    mkdirSync(opts.outDir, { recursive: true });
    svg = path.join(opts.outDir, `compare-${presetName}.svg`);
    json = path.join(opts.outDir, `compare-${presetName}.json`);
    writeFileSync(svg, compareFigure(rows, presetName));
    writeFileSync(json, JSON.stringify({ preset: presetName, base, train, rows: rows.map(({ curve, ...r }) => ({ ...r, curve: thin(curve, 200) })) }, null, 1));
    log(`\nwrote ${svg}\nwrote ${json}`);
  }
  return { rows, svg, json, table };
}

function thin<T>(a: T[], n: number): T[] {
  if (a.length <= n) return a;
  const step = a.length / n;
  return Array.from({ length: n }, (_, i) => a[Math.floor(i * step)]).concat([a[a.length - 1]]);
}

/** Exponential moving average of a curve (what the plot draws for noisy per-batch losses). */
function smooth(points: { step: number; bpb: number }[], beta = 0.9): [number, number][] {
  let m = NaN;
  return points.map((p, i) => {
    m = i === 0 ? p.bpb : beta * m + (1 - beta) * p.bpb;
    return [p.step, m];
  });
}

export function compareFigure(rows: CompareRow[], title: string): string {
  // Skip the first 5% of steps (the drop from 8 bits/byte) so the axis shows where the models differ.
  const train: Series[] = rows.map((r) => {
    const pts = smooth(r.curve);
    return { name: r.name, points: pts.slice(Math.floor(pts.length * 0.05)) };
  });
  const valid: Series[] = rows.map((r) => ({ name: r.name, points: r.valid.map((v) => [v.step, v.bpb] as [number, number]) }));
  const histograms: Histogram[] = [];
  for (const r of rows) {
    if (!r.usage.length) continue;
    const n = r.usage[0].counts.length;
    const sum = new Array<number>(n).fill(0);
    for (const u of r.usage) u.counts.forEach((c, i) => (sum[i] += c));
    histograms.push({ name: `${r.name}: expert usage (all layers, valid)`, counts: sum });
  }
  return compareSvg({ train, valid, histograms, title: `compare (${title}): training loss, EMA (bits/byte)` });
}

export function formatCompareTable(rows: CompareRow[]): string {
  const head = ['model', 'params', 'FFN FLOPs', 'FFN share', 'valid bpb', 'Δ vs dense', 'tokens/s', 'peak MB', 'experts used', 'KL→uniform'];
  const dense = rows.find((r) => r.kind === 'dense');
  const body = rows.map((r) => {
    const used = r.usage.length ? `${((100 * r.usage.reduce((a, u) => a + u.used, 0)) / r.usage.length).toFixed(0)}%` : '-';
    const kl = r.usage.length ? (r.usage.reduce((a, u) => a + u.klUniform, 0) / r.usage.length).toFixed(3) : '-';
    return [
      r.name,
      `${(r.params / 1e6).toFixed(3)}M`,
      `${(100 * r.ffnFlopsVsDense).toFixed(0)}%`,
      `${(100 * r.ffnFlopsShare).toFixed(0)}%`,
      r.validBpb.toFixed(4),
      dense && r !== dense ? `${r.validBpb - dense.validBpb >= 0 ? '+' : ''}${(r.validBpb - dense.validBpb).toFixed(4)}` : '',
      Math.round(r.tokensPerSecond).toString(),
      (r.peakTensorBytes / 2 ** 20).toFixed(1),
      used,
      kl,
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ') + ' |';
  return [line(head), '|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|', ...body.map(line)].join('\n');
}
