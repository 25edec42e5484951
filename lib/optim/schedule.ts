/**
 * Learning-rate schedule: linear warm-up over `warmup` steps, then cosine decay to `minLr` at `total` steps
 * (the σ-MoE paper decays to 0 over the whole run, §1.11 of the methods notes).
 * lr(t) = lr·(t+1)/warmup for t < warmup; else minLr + ½(lr − minLr)(1 + cos(π·p)), p = (t − warmup)/(total − warmup).
 */
import { isObject, showValue } from '../errors.js';
import { ConfigError } from '../nn/config.js';

export interface ScheduleOptions {
  lr: number;
  total: number;
  warmup?: number;
  minLr?: number;
}

function checkScheduleOptions(o: unknown): asserts o is ScheduleOptions {
  if (!isObject(o)) throw new ConfigError(`cosineLr: opts must be an object (ScheduleOptions), got ${showValue(o)}`);
  const r = o as Record<string, unknown>;
  const num = (f: string, int: boolean, lo: number, optional: boolean): void => {
    const v = r[f];
    if (optional && v === undefined) return;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || (int && !Number.isInteger(v)))
      throw new ConfigError(`cosineLr: opts.${f} must be ${int ? 'an integer' : 'a finite number'} ≥ ${lo}, got ${showValue(v)}`);
  };
  num('lr', false, 0, false);
  num('total', true, 1, false);
  num('warmup', true, 0, true);
  num('minLr', false, 0, true);
}

export function cosineLr(step: number, opts: ScheduleOptions): number {
  if (typeof step !== 'number' || !Number.isFinite(step) || step < 0)
    throw new RangeError(`cosineLr: step must be a finite number ≥ 0, got ${showValue(step)}`);
  checkScheduleOptions(opts);
  const warmup = opts.warmup ?? 0;
  const minLr = opts.minLr ?? 0;
  if (step < warmup) return (opts.lr * (step + 1)) / warmup;
  const span = Math.max(1, opts.total - warmup);
  const p = Math.min(1, (step - warmup) / span);
  return minLr + 0.5 * (opts.lr - minLr) * (1 + Math.cos(Math.PI * p));
}
