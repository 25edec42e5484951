/**
 * The worker side of AsyncTrainer: owns a Trainer on its own thread and answers requests one at a time.
 * Messages: { id, op: 'init' | 'step' | 'evaluate' | 'save' | 'generate' | 'usage' | 'close', args }.
 */
import { parentPort } from 'node:worker_threads';

import { Trainer, type TrainConfig } from './trainer.js';

let trainer: Trainer | null = null;

interface Request {
  id: number;
  op: string;
  args: unknown[];
}

function live(op: string): Trainer {
  if (!trainer) throw new Error(`AsyncTrainer worker: ${op} before init or after close`);
  return trainer;
}

function handle(req: Request): unknown {
  switch (req.op) {
    case 'init': {
      const [cfg, resume] = req.args as [TrainConfig | null, string | null];
      trainer = resume ? Trainer.resume(resume, cfg ?? {}) : new Trainer(cfg!);
      return { step: trainer.step, params: trainer.numParameters, config: trainer.config };
    }
    case 'step':
      return live(req.op).trainStep();
    case 'evaluate':
      return live(req.op).evaluate(...(req.args as [('valid' | 'test' | 'train')?, number?]));
    case 'save':
      live(req.op).save(req.args[0] as string);
      return null;
    case 'generate':
      return live(req.op).generate(...(req.args as [string, number, object?]));
    case 'usage':
      return live(req.op).usage();
    case 'close':
      trainer?.dispose();
      trainer = null;
      return null;
    default:
      throw new Error(`AsyncTrainer worker: unknown op ${req.op}`);
  }
}

parentPort!.on('message', (req: Request) => {
  try {
    parentPort!.postMessage({ id: req.id, ok: true, value: handle(req) });
  } catch (e) {
    const err = e as Error;
    parentPort!.postMessage({ id: req.id, ok: false, error: { name: err.name, message: err.message } });
  }
});
