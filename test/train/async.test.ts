/**
 * AsyncTrainer: steps run on a worker thread (the event loop keeps ticking meanwhile) and give the same results as
 * the synchronous Trainer. Uses the compiled worker (dist/, built by `npm ci` / `npm run build:ts`).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { AsyncTrainer } from '../../lib/train/async.js';
import { Trainer, type TrainConfig } from '../../lib/train/trainer.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'sffn-async-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('AsyncTrainer', () => {
  it('runs steps off the main thread with results identical to the synchronous trainer', async () => {
    const data = path.join(dir, 'text.txt');
    writeFileSync(data, 'It was the best of times, it was the worst of times. '.repeat(400));
    const cfg: TrainConfig = {
      model: { vocab: 256, dModel: 32, nLayers: 2, nHeads: 2, context: 32, ffn: { kind: 'sigma-moe', experts: 4, k: 2, expertSize: 16 } },
      data,
      steps: 10,
      batch: 8,
      lr: 3e-3,
      seed: 2,
    };
    const sync = new Trainer(cfg);
    const want = [sync.trainStep().loss, sync.trainStep().loss];
    sync.dispose();

    const t = await AsyncTrainer.create(cfg);
    expect(t.info!.params).toBeGreaterThan(0);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const got: number[] = [];
    for (let i = 0; i < 2; i++) got.push((await t.trainStepAsync()).loss);
    clearInterval(timer);
    expect(got).toEqual(want);
    // The main thread was free while the worker computed.
    expect(ticks).toBeGreaterThan(0);
    const ev = await t.evaluateAsync('valid', 1024);
    expect(ev.bpb).toBeGreaterThan(0);
    await t.saveAsync(path.join(dir, 'a.safetensors'));
    await t.close();

    // Resume on a worker from the checkpoint written there.
    const r = await AsyncTrainer.create(null, { resume: path.join(dir, 'a.safetensors') });
    expect(r.info!.step).toBe(2);
    await r.close();
    await expect(AsyncTrainer.create({ ...cfg, model: { ...cfg.model, nHeads: 3 } })).rejects.toThrow(/divisible by nHeads/);
  });
});
