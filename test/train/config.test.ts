import { describe, expect, it } from 'vitest';

import {
  ConfigError,
  ffnParams,
  modelFlopsPerToken,
  modelParams,
  parameterEqual,
  validateModelConfig,
  type ModelConfig,
} from '../../lib/nn/config.js';
import { sampleLogits } from '../../lib/train/sample.js';
import { UsageCounter, usageStats } from '../../lib/train/usage.js';
import { compareSvg } from '../../lib/train/plot.js';
import { parseFlags, trainConfigFromFlags } from '../../lib/cli.js';

const base: ModelConfig = { vocab: 256, dModel: 128, nLayers: 4, nHeads: 4, context: 128, ffn: { kind: 'dense', dFF: 512 } };

describe('model config validation (before any training)', () => {
  it('rejects K > E, d_model not divisible by heads, unknown FFN kinds, bad per-layer lists', () => {
    expect(() => validateModelConfig({ ...base, ffn: { kind: 'sigma-moe', experts: 8, k: 9, expertSize: 64 } })).toThrow(
      new ConfigError('ffn.k must be in [1, experts=8], got 9'),
    );
    expect(() => validateModelConfig({ ...base, nHeads: 5 })).toThrow(/dModel must be divisible by nHeads: dModel=128, nHeads=5/);
    expect(() => validateModelConfig({ ...base, ffn: { kind: 'mlp' } as never })).toThrow(/unknown FFN kind 'mlp', expected one of dense, topk/);
    expect(() => validateModelConfig({ ...base, ffn: [base.ffn as never] })).toThrow(/one per layer \(nLayers=4\)/);
    expect(() => validateModelConfig({ ...base, ffn: { kind: 'topk', dFF: 64, k: 65 } })).toThrow(/k must be in \[1, dFF=64\]/);
    expect(() => validateModelConfig({ ...base, ffn: { kind: 'switch', experts: 4, k: 2, expertSize: 64 } })).toThrow(/k must be 1 for switch/);
    expect(() => validateModelConfig({ ...base, ffn: { kind: 'pkm', heads: 4, subKeys: 8, k: 9 } })).toThrow(/k must be in \[1, subKeys=8\]/);
    expect(() => validateModelConfig({ ...base, dModel: 0 })).toThrow(/dModel must be a positive integer/);
    expect(() =>
      validateModelConfig({
        ...base,
        sharedRouter: true,
        nLayers: 2,
        ffn: [
          { kind: 'sigma-moe', experts: 8, k: 2, expertSize: 16 },
          { kind: 'sigma-moe', experts: 4, k: 2, expertSize: 16 },
        ],
      }),
    ).toThrow(/same number of experts/);
  });
});

describe('parameter counts and the parameter-equal protocol', () => {
  it("reproduces the paper's d=412 example: dense 2053 vs MoE 16×128", () => {
    expect(ffnParams(412, { kind: 'dense', dFF: 2053 })).toBe(1_694_137);
    expect(ffnParams(412, { kind: 'sigma-moe', experts: 16, k: 4, expertSize: 128 })).toBe(1_694_144);
  });
  it('builds sparse configs whose totals match the dense twin within half a channel per layer', () => {
    for (const kind of ['sigma-moe', 'switch', 'softmax-moe', 'adaptive', 'topk', 'pkm', 'peer'] as const) {
      const p = parameterEqual(base, kind);
      expect(Math.abs(p.denseParams - p.sparseParams), kind).toBeLessThanOrEqual(base.nLayers * (base.dModel + 1));
      validateModelConfig(p.sparse);
    }
    const s = parameterEqual(base, 'sigma-moe');
    expect(s.sparse.ffn).toMatchObject({ kind: 'sigma-moe', experts: 16, k: 4, expertSize: 32 });
    // The dense twin grows to cover the selector minus its own biases: (2·128·512 + 16·128 − 128) / 257 ≈ 517.5
    // (the same rule gives the paper's 2053 for D = 412, E·G = 2048).
    expect((s.dense.ffn as { dFF: number }).dFF).toBe(517);
    const paper = parameterEqual({ ...base, dModel: 412, nHeads: 2, ffn: { kind: 'dense', dFF: 2048 } }, 'sigma-moe', { experts: 16 });
    expect((paper.dense.ffn as { dFF: number }).dFF).toBe(2053);
    expect(parameterEqual(base, 'switch').sparse.ffn).toMatchObject({ kind: 'switch', experts: 4, k: 1, expertSize: 128 });
    expect(() => parameterEqual(base, 'nope' as never)).toThrow(/unknown FFN kind 'nope'/);
    expect(() => parameterEqual({ ...base, ffn: { kind: 'sigma-moe', experts: 4, k: 1, expertSize: 8 } }, 'pkm')).toThrow(/one dense FFN/);
  });
  it('FLOPs: σ-MoE with K/E = 1/4 spends about a quarter of the dense FFN', () => {
    const p = parameterEqual(base, 'sigma-moe');
    const d = modelFlopsPerToken(p.dense);
    const s = modelFlopsPerToken(p.sparse);
    expect(s.ffn / d.ffn).toBeGreaterThan(0.25);
    expect(s.ffn / d.ffn).toBeLessThan(0.3);
    expect(modelParams(p.sparse)).toBe(p.sparseParams);
  });
});

describe('sampling, usage statistics, plots, CLI flags', () => {
  it('greedy, temperature and top-p sampling', () => {
    const logits = [0, 3, 1, 3];
    expect(sampleLogits(logits, { temperature: 0 }, 0.99)).toBe(1);
    // top-p tiny keeps only the best (ties: lowest id first)
    expect(sampleLogits(logits, { topP: 1e-6 }, 0.99)).toBe(1);
    // u sweeps the distribution in descending-probability order
    expect(sampleLogits(logits, {}, 0)).toBe(1);
    expect(sampleLogits(logits, {}, 0.999)).toBe(0);
    expect(() => sampleLogits(logits, { topP: 0 }, 0.5)).toThrow(/topP must be in \(0, 1\]/);
  });
  it('usage: fraction used and KL to uniform', () => {
    expect(usageStats([1, 1, 1, 1]).used).toBe(1);
    expect(usageStats([1, 1, 1, 1]).klUniform).toBeCloseTo(0, 12);
    const one = usageStats([5, 0, 0, 0]);
    expect(one.used).toBe(0.25);
    expect(one.klUniform).toBeCloseTo(Math.log(4));
    const c = new UsageCounter(3);
    c.addIds([0, 2, 2, -1]);
    expect(Array.from(c.counts)).toEqual([1, 0, 2]);
  });
  it('the compare SVG is well-formed and has every series', () => {
    const svg = compareSvg({
      train: [{ name: 'dense', points: [[1, 3], [2, 2.5]] }, { name: 'sigma-moe', points: [[1, 3.1], [2, 2.4]] }],
      valid: [{ name: 'dense', points: [[2, 2.6]] }],
      histograms: [{ name: 'sigma-moe <usage>', counts: [3, 1, 0, 2] }],
    });
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('sigma-moe &lt;usage&gt;');
    expect(svg.match(/<path /g)?.length).toBe(3);
  });
  it('CLI flags build a TrainConfig; --param-equal applies the protocol; unknown flags fail', async () => {
    const { flags } = parseFlags(['--ffn', 'sigma-moe', '--param-equal', '--dff', '512', '--steps', '10', '--data=foo.txt'], ['param-equal']);
    const cfg = await trainConfigFromFlags(flags);
    expect(cfg.model.ffn).toMatchObject({ kind: 'sigma-moe', experts: 16, k: 4, expertSize: 32 });
    expect(cfg.steps).toBe(10);
    expect(cfg.data).toBe('foo.txt');
    await expect(trainConfigFromFlags(parseFlags(['--stepz', '3']).flags)).rejects.toThrow(/unknown option --stepz/);
    await expect(trainConfigFromFlags(parseFlags(['--steps', 'many']).flags)).rejects.toThrow(/--steps needs a number, got 'many'/);
  });
});
