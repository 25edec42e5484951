#!/usr/bin/env node
/** The `sparse-ffn` command line: train, compare, generate, bench, info (and `start`, what `npm start` runs). */
import { readFileSync, existsSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { formatInfo, info } from './info.js';

const HELP = `usage: sparse-ffn <command> [options]

commands:
  train [options]     train a byte-level TransformerLM (see 'sparse-ffn train --help')
  compare [options]   dense vs sigma-moe vs switch vs pkm vs peer at equal parameters: one table and an SVG
  generate [options]  sample text from a checkpoint
  bench <suite>       run a benchmark suite (same as npm run bench -- <suite>)
  info [--json]       backend chosen and why, CPU features, threads, GPU
  start               what \`npm start\` runs: compare --preset quick
`;

const TRAIN_HELP = `usage: sparse-ffn train [--config file.json] [options]

data and run:
  --data SPEC            moby-dick (default, bundled) | sotu | enwik8:<file> | <file>
  --steps N --batch B --lr X --min-lr X --warmup N --weight-decay X --clip X --sparse-lr X --seed N
  --eval-every N --eval-bytes N --checkpoint FILE --checkpoint-every N --log FILE.jsonl --threads N
  --resume FILE          continue from a checkpoint (flags given override its run-length settings)
model:
  --d-model D --layers L --heads H --context S --dropout P
  --ffn KIND             dense | topk | sigma-moe | switch | softmax-moe | adaptive | pkm | peer
  --dff F                dense / topk width          --topk K              topk channels kept
  --experts E --k K --expert-size G --gamma X --expert-dropout P --capacity-factor X --balance X --threshold X
  --heads-mem H --sub-keys n --knn k --query-dim Dk --variant csordas|lample     (pkm / peer)
  --shared-router        one router for every MoE layer
  --param-equal          build the sparse FFN at equal parameters from the dense --dff (the paper's protocol)
A JSON config has the same fields as the TrainConfig type ({ model: {...}, steps, batch, lr, ... }); flags override it.
`;

type Flags = Record<string, string | true>;

/** Parses --key value, --key=value and bare --flag. Positional arguments are returned separately. */
export function parseFlags(argv: string[], booleans: string[] = []): { flags: Flags; positional: string[] } {
  const flags: Flags = {};
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      positional.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const key = eq > 0 ? a.slice(2, eq) : a.slice(2);
    if (eq > 0) flags[key] = a.slice(eq + 1);
    else if (booleans.includes(key) || i + 1 >= argv.length || argv[i + 1].startsWith('--')) flags[key] = true;
    else flags[key] = argv[++i];
  }
  return { flags, positional };
}

class UsageError extends Error {
  override name = 'UsageError';
}

function numFlag(flags: Flags, key: string): number | undefined {
  const v = flags[key];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v === true || !Number.isFinite(n)) throw new UsageError(`--${key} needs a number, got ${v === true ? 'nothing' : `'${v}'`}`);
  return n;
}

const TRAIN_FLAGS = new Set([
  'config', 'data', 'steps', 'batch', 'lr', 'min-lr', 'warmup', 'weight-decay', 'clip', 'sparse-lr', 'seed', 'eval-every',
  'eval-bytes', 'checkpoint', 'checkpoint-every', 'log', 'threads', 'resume', 'd-model', 'layers', 'heads', 'context',
  'dropout', 'ffn', 'dff', 'topk', 'experts', 'k', 'expert-size', 'gamma', 'expert-dropout', 'capacity-factor', 'balance',
  'threshold', 'heads-mem', 'sub-keys', 'knn', 'query-dim', 'variant', 'shared-router', 'param-equal', 'help', 'sample',
]);

/** Builds a TrainConfig from a JSON config file and flags (flags win). Exported for tests. */
export async function trainConfigFromFlags(flags: Flags): Promise<import('./train/trainer.js').TrainConfig> {
  for (const k of Object.keys(flags)) if (!TRAIN_FLAGS.has(k)) throw new UsageError(`unknown option --${k} (see sparse-ffn train --help)`);
  const { parameterEqual } = await import('./nn/config.js');
  let cfg: Record<string, unknown> = {};
  if (typeof flags.config === 'string') {
    if (!existsSync(flags.config)) throw new UsageError(`--config: file not found: ${flags.config}`);
    try {
      cfg = JSON.parse(readFileSync(flags.config, 'utf8'));
    } catch (e) {
      throw new UsageError(`--config: ${flags.config} is not valid JSON (${(e as Error).message})`);
    }
  }
  const model = { vocab: 256, dModel: 128, nLayers: 4, nHeads: 4, context: 128, ffn: { kind: 'dense', dFF: 512 }, ...(cfg.model as object) } as Record<string, unknown>;
  const set = (obj: Record<string, unknown>, key: string, v: unknown): void => {
    if (v !== undefined) obj[key] = v;
  };
  set(model, 'dModel', numFlag(flags, 'd-model'));
  set(model, 'nLayers', numFlag(flags, 'layers'));
  set(model, 'nHeads', numFlag(flags, 'heads'));
  set(model, 'context', numFlag(flags, 'context'));
  set(model, 'dropout', numFlag(flags, 'dropout'));
  if (flags['shared-router']) model.sharedRouter = true;
  const kind = typeof flags.ffn === 'string' ? flags.ffn : undefined;
  let ffn = { ...(model.ffn as Record<string, unknown>) };
  if (kind && !flags['param-equal'] && kind !== ffn.kind) ffn = { kind };
  set(ffn, 'dFF', numFlag(flags, 'dff'));
  set(ffn, 'k', numFlag(flags, 'topk') ?? numFlag(flags, 'k') ?? numFlag(flags, 'knn'));
  set(ffn, 'experts', numFlag(flags, 'experts'));
  set(ffn, 'expertSize', numFlag(flags, 'expert-size'));
  set(ffn, 'gamma', numFlag(flags, 'gamma'));
  set(ffn, 'expertDropout', numFlag(flags, 'expert-dropout'));
  set(ffn, 'capacityFactor', numFlag(flags, 'capacity-factor'));
  set(ffn, 'balance', numFlag(flags, 'balance'));
  set(ffn, 'threshold', numFlag(flags, 'threshold'));
  set(ffn, 'heads', numFlag(flags, 'heads-mem'));
  set(ffn, 'subKeys', numFlag(flags, 'sub-keys'));
  set(ffn, 'queryDim', numFlag(flags, 'query-dim'));
  if (typeof flags.variant === 'string') ffn.variant = flags.variant;
  model.ffn = ffn;
  if (flags['param-equal']) {
    if (!kind) throw new UsageError('--param-equal needs --ffn KIND (the sparse kind to build from the dense --dff)');
    const pair = parameterEqual({ ...(model as object), ffn: { kind: 'dense', dFF: (ffn.dFF as number) ?? 512 } } as never, kind as never, {
      experts: numFlag(flags, 'experts'),
      k: numFlag(flags, 'k'),
      gamma: numFlag(flags, 'gamma'),
      expertDropout: numFlag(flags, 'expert-dropout'),
    });
    Object.assign(model, kind === 'dense' ? pair.dense : pair.sparse);
  }
  const out: Record<string, unknown> = { steps: 1000, batch: 16, lr: 1e-3, warmup: 50, evalEvery: 100, ...cfg, model };
  const map: [string, string][] = [
    ['steps', 'steps'], ['batch', 'batch'], ['lr', 'lr'], ['min-lr', 'minLr'], ['warmup', 'warmup'], ['weight-decay', 'weightDecay'],
    ['clip', 'clip'], ['sparse-lr', 'sparseLr'], ['seed', 'seed'], ['eval-every', 'evalEvery'], ['eval-bytes', 'evalBytes'],
    ['checkpoint-every', 'checkpointEvery'], ['threads', 'threads'],
  ];
  for (const [f, k] of map) set(out, k, numFlag(flags, f));
  for (const [f, k] of [['data', 'data'], ['checkpoint', 'checkpoint'], ['log', 'log']] as const) {
    if (flags[f] === true) throw new UsageError(`--${f} needs a value`);
    set(out, k, flags[f]);
  }
  return out as unknown as import('./train/trainer.js').TrainConfig;
}

async function cmdTrain(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, ['shared-router', 'param-equal', 'help']);
  if (flags.help) {
    console.log(TRAIN_HELP);
    return 0;
  }
  const { Trainer } = await import('./train/trainer.js');
  const { modelParams } = await import('./nn/config.js');
  let t;
  if (typeof flags.resume === 'string') {
    const over: Record<string, unknown> = {};
    for (const [f, k] of [['steps', 'steps'], ['eval-every', 'evalEvery'], ['checkpoint-every', 'checkpointEvery'], ['threads', 'threads']] as const) {
      const v = numFlag(flags, f);
      if (v !== undefined) over[k] = v;
    }
    for (const f of ['checkpoint', 'log'] as const) if (typeof flags[f] === 'string') over[f] = flags[f];
    t = Trainer.resume(flags.resume, over);
    console.log(`resumed ${flags.resume} at step ${t.step}`);
  } else {
    const cfg = await trainConfigFromFlags(flags);
    t = new Trainer(cfg); // validates config and data before any step
  }
  const c = t.config;
  const f = Array.isArray(c.model.ffn) ? c.model.ffn.map((x) => x.kind).join(',') : c.model.ffn.kind;
  console.log(
    `training ${f} model: ${(modelParams(c.model) / 1e6).toFixed(3)}M parameters, D=${c.model.dModel}, ${c.model.nLayers} layers, context ${c.model.context}; ` +
      `${t.corpus.name} (${(t.corpus.train.length / 1e6).toFixed(2)} MB train); ${c.steps} steps × batch ${c.batch}`,
  );
  const res = t.run();
  console.log(`valid: ${res.bpb.toFixed(4)} bits/byte (${res.tokens} bytes)`);
  for (const u of t.usage()) console.log(`  layer ${u.layer} ${u.kind}: ${(100 * u.used).toFixed(0)}% of ${u.n} used, KL to uniform ${u.klUniform.toFixed(3)}`);
  if (flags.sample !== undefined) console.log(`sample: ${JSON.stringify(t.generate(typeof flags.sample === 'string' ? flags.sample : 'The ', 200, { temperature: 0.8, topP: 0.95 }))}`);
  if (c.checkpoint) console.log(`checkpoint: ${c.checkpoint}`);
  t.dispose();
  return 0;
}

async function cmdCompare(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, ['quiet', 'help']);
  if (flags.help) {
    console.log(`usage: sparse-ffn compare [--preset quick|small] [--kinds dense,sigma-moe,switch,pkm,peer] [--steps N] [--data SPEC] [--out DIR] [--threads N]`);
    return 0;
  }
  const known = new Set(['preset', 'kinds', 'steps', 'data', 'out', 'threads', 'quiet', 'help', 'batch', 'lr']);
  for (const k of Object.keys(flags)) if (!known.has(k)) throw new UsageError(`unknown option --${k} (see sparse-ffn compare --help)`);
  const { runCompare } = await import('./train/compare.js');
  const { FFN_KINDS } = await import('./nn/config.js');
  const kinds = typeof flags.kinds === 'string' ? flags.kinds.split(',') : undefined;
  for (const k of kinds ?? []) if (!(FFN_KINDS as readonly string[]).includes(k)) throw new UsageError(`--kinds: unknown FFN kind '${k}', expected some of ${FFN_KINDS.join(', ')}`);
  const threads = numFlag(flags, 'threads');
  if (threads) (await import('./info.js')).setNumThreads(threads);
  const train: Record<string, number> = {};
  if (numFlag(flags, 'batch')) train.batch = numFlag(flags, 'batch')!;
  if (numFlag(flags, 'lr')) train.lr = numFlag(flags, 'lr')!;
  runCompare({
    preset: typeof flags.preset === 'string' ? flags.preset : 'quick',
    kinds: kinds as never,
    steps: numFlag(flags, 'steps'),
    data: typeof flags.data === 'string' ? flags.data : undefined,
    outDir: typeof flags.out === 'string' ? flags.out : 'compare-results',
    quiet: Boolean(flags.quiet),
    train,
  });
  return 0;
}

async function cmdGenerate(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, ['help']);
  if (flags.help || typeof flags.checkpoint !== 'string') {
    console.log(`usage: sparse-ffn generate --checkpoint FILE [--prompt TEXT] [--n BYTES] [--temperature T] [--top-p P] [--seed N]`);
    return flags.help ? 0 : 2;
  }
  const { Trainer } = await import('./train/trainer.js');
  const t = Trainer.resume(flags.checkpoint);
  const prompt = typeof flags.prompt === 'string' ? flags.prompt : 'The ';
  const text = t.generate(prompt, numFlag(flags, 'n') ?? 300, {
    temperature: numFlag(flags, 'temperature') ?? 0.8,
    topP: numFlag(flags, 'top-p') ?? 0.95,
    seed: numFlag(flags, 'seed') ?? 0,
  });
  process.stdout.write(prompt + text + '\n');
  t.dispose();
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'info':
      console.log(rest.includes('--json') ? JSON.stringify(info(), null, 2) : formatInfo());
      return 0;
    case 'bench': {
      const { runBench } = await import('../bench/index.js');
      return runBench(rest);
    }
    case 'train':
      return cmdTrain(rest);
    case 'compare':
      return cmdCompare(rest);
    case 'generate':
      return cmdGenerate(rest);
    case 'start':
      console.log(formatInfo() + '\n');
      return cmdCompare(['--preset', 'quick', ...rest]);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      console.log(HELP);
      return cmd === undefined ? 1 : 0;
    default:
      console.error(`sparse-ffn: unknown command '${cmd}'\n\n${HELP}`);
      return 2;
  }
}

// Only run when executed (tests import parseFlags / trainConfigFromFlags).
function isMain(): boolean {
  try {
    return Boolean(process.argv[1]) && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}
if (isMain()) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      console.error(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
      process.exit(1);
    },
  );
}
