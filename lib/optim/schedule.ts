/**
 * Learning-rate schedule: linear warm-up over `warmup` steps, then cosine decay to `minLr` at `total` steps
 * (the σ-MoE paper decays to 0 over the whole run, §1.11 of the methods notes).
 * lr(t) = lr·(t+1)/warmup for t < warmup; else minLr + ½(lr − minLr)(1 + cos(π·p)), p = (t − warmup)/(total − warmup).
 */
export interface ScheduleOptions {
  lr: number;
  total: number;
  warmup?: number;
  minLr?: number;
}

export function cosineLr(step: number, o: ScheduleOptions): number {
  const warmup = o.warmup ?? 0;
  const minLr = o.minLr ?? 0;
  if (step < warmup) return (o.lr * (step + 1)) / warmup;
  const span = Math.max(1, o.total - warmup);
  const p = Math.min(1, (step - warmup) / span);
  return minLr + 0.5 * (o.lr - minLr) * (1 + Math.cos(Math.PI * p));
}
