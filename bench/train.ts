/**
 * End-to-end training throughput: tokens/s of one training step (forward, backward, clipping, AdamW) for
 * dense vs σ-MoE vs PKM vs PEER at equal parameters, at the `compare` preset and at D=512, 8 layers,
 * context 512 (σ-MoE E=16, K=4, G=128: the σ-MoE paper's enwik8 shape), with the step time split by layer
 * kind (attention, FFN, embedding + head, optimiser).
 *
 * Run: npm run bench -- train [--quick] [--big-only] [--preset-only] [--runs N]
 */
import { tidy } from '../lib/tensor.js';
import { noGrad, profile } from '../lib/autograd.js';
import { TransformerLM } from '../lib/nn/transformer.js';
import { AdamW } from '../lib/optim/adamw.js';
import { clipGradNorm } from '../lib/optim/clip.js';
import { type FfnKind, type ModelConfig, modelParams } from '../lib/nn/config.js';
import { compareConfigs, PRESETS } from '../lib/train/compare.js';
import { Batcher, loadCorpus } from '../lib/data/corpus.js';
import { parseArgs, printTable, writeResults, time } from './harness.js';

interface Row {
  shape: string;
  model: string;
  params: string;
  tokens: number;
  ms: number;
  tokPerS: number;
  vsDense: string;
  split: string;
}

// Real text (the bundled corpus), so routing sees realistic token statistics (a synthetic pattern can collapse onto
// a few experts and misrepresent the grouped GEMMs' balance).
const corpus = loadCorpus('moby-dick');

function benchModel(cfg: ModelConfig, B: number, runs: number): { ms: number; split: Record<string, number> } {
  const model = new TransformerLM(cfg, { seed: 1 });
  const opt = new AdamW(model.namedParameters(), { lr: 1e-4 });
  const S = cfg.context;
  const batcher = new Batcher(corpus.train, { batch: B, context: S, seed: 1 });
  let step = 0;
  const once = (): void => {
    tidy(() => {
      const { x, y } = batcher.batch(step);
      const out = model.forward(x, y, B, S, { step: step++ });
      out.loss.backward();
      clipGradNorm(model.parameters(), 0.25);
      const t0 = performance.now();
      noGrad(() => opt.step(1e-4));
      if (profile.enabled) profile.forward.set('optimizer', (profile.forward.get('optimizer') ?? 0) + performance.now() - t0);
      model.zeroGrad();
      return null;
    });
  };
  const t = time(once, { warmup: 1, minRuns: runs, maxRuns: runs, minSeconds: 0 });
  // One more profiled step for the split (profiling adds a few timer calls, not counted in the median above).
  profile.forward.clear();
  profile.backward.clear();
  profile.enabled = true;
  once();
  profile.enabled = false;
  const split: Record<string, number> = {};
  for (const [k, v] of profile.forward) split[k.startsWith('ffn:') ? 'ffn' : k] = (split[k.startsWith('ffn:') ? 'ffn' : k] ?? 0) + v;
  for (const [k, v] of profile.backward) split[k.startsWith('ffn:') ? 'ffn' : k] = (split[k.startsWith('ffn:') ? 'ffn' : k] ?? 0) + v;
  opt.dispose();
  model.dispose();
  return { ms: t.median * 1000, split };
}

function fmtSplit(split: Record<string, number>): string {
  const total = Object.values(split).reduce((a, b) => a + Math.max(0, b), 0) || 1;
  return ['attention', 'ffn', 'embed+head', 'optimizer', 'other']
    .filter((k) => split[k] !== undefined && split[k] > 0.5)
    .map((k) => `${k} ${Math.round((100 * split[k]) / total)}%`)
    .join(', ');
}

export async function run(args: string[]): Promise<void> {
  const a = parseArgs(args);
  const quick = Boolean(a.quick);
  const runs = Number(a.runs ?? (quick ? 3 : 5));
  const kinds: FfnKind[] = ['dense', 'sigma-moe', 'pkm', 'peer'];
  const shapes: { name: string; base: ModelConfig; batch: number; sparse: Parameters<typeof compareConfigs>[2] }[] = [];
  if (!a['big-only'])
    shapes.push({ name: 'compare preset (quick)', base: PRESETS.quick.base, batch: PRESETS.quick.train.batch, sparse: PRESETS.quick.sparse });
  if (!a['preset-only'])
    shapes.push({
      name: 'D=512, 8 layers, S=512',
      base: { vocab: 256, dModel: 512, nLayers: 8, nHeads: 8, context: 512, ffn: { kind: 'dense', dFF: 2048 } },
      batch: quick ? 1 : 2,
      sparse: { experts: 16, k: 4, gamma: 0.001, pkmHeads: 4, pkmK: 16, peerHeads: 8, peerK: 16 },
    });
  const rows: Row[] = [];
  for (const sh of shapes) {
    const models = compareConfigs(sh.base, kinds, sh.sparse);
    let denseMs = NaN;
    for (const m of models) {
      const tokens = sh.batch * m.config.context;
      const r = benchModel(m.config, sh.batch, runs);
      if (m.kind === 'dense') denseMs = r.ms;
      rows.push({
        shape: sh.name,
        model: m.name,
        params: `${(modelParams(m.config) / 1e6).toFixed(2)}M`,
        tokens,
        ms: r.ms,
        tokPerS: Math.round(tokens / (r.ms / 1000)),
        vsDense: `${(denseMs / r.ms).toFixed(2)}×`,
        split: fmtSplit(r.split),
      });
      console.error(`  ${sh.name} ${m.name}: ${r.ms.toFixed(0)} ms/step`);
    }
  }
  printTable(rows as unknown as Record<string, string | number>[], 'Training step throughput (forward + backward + clip + AdamW), median');
  writeResults('train', rows);
}
