/**
 * Shared benchmark plumbing: timing with warm-up and medians, the machine description, tables and JSON
 * results. Every suite uses this so numbers are comparable.
 */
import { execSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import { info } from '../lib/info.js';
import { packageRoot } from '../lib/native/loader.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * A full GC before a timed call, so that one call's garbage is not charged to the next. `npm run bench` runs
 * node with --single-threaded-gc: by default V8 frees ArrayBuffer backing stores and unmaps pages on background
 * threads after a GC, and on a 2-core machine that work took a core from the thread pool and charged whatever
 * ran next with up to 10 ms (a 0.3 ms moeRoute measured at 4-9 ms right after a 100 MB dense step).
 */
export function collectGarbage(): void {
  gc();
}

/** The median of a list (the upper middle for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((p, q) => p - q);
  return s[s.length >> 1];
}

/** Seconds of one call of fn, after collecting the garbage of whatever ran before. */
export function timeCall(fn: () => void): number {
  collectGarbage();
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * Runs every function once (warm-up), then `rounds` rounds calling each in turn once, each call timed on its own
 * by `once`; returns the median seconds per name. Interleaving lets changes of machine load (or clocks) hit every
 * function alike, so ratios between them stay meaningful on a shared machine.
 */
export function timeInterleaved(
  fns: Record<string, () => void>,
  rounds: number,
  once: (fn: () => void) => number = timeCall,
): Record<string, number> {
  const samples: Record<string, number[]> = {};
  for (const [name, fn] of Object.entries(fns)) {
    once(fn);
    samples[name] = [];
  }
  for (let r = 0; r < rounds; r++) for (const [name, fn] of Object.entries(fns)) samples[name].push(once(fn));
  const out: Record<string, number> = {};
  for (const [name, s] of Object.entries(samples)) out[name] = median(s);
  return out;
}

export interface Timing {
  /** Median seconds per call. */
  median: number;
  p10: number;
  p90: number;
  runs: number;
}

function quantile(sorted: number[], q: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i];
}

/**
 * Times fn: `warmup` untimed calls, then repeated timed calls until both `minRuns` calls and `minSeconds`
 * have passed (at most `maxRuns`). Returns the median and spread in seconds.
 */
export function time(
  fn: () => void,
  opts: { warmup?: number; minRuns?: number; maxRuns?: number; minSeconds?: number } = {},
): Timing {
  const { warmup = 2, minRuns = 5, maxRuns = 200, minSeconds = 0.3 } = opts;
  for (let i = 0; i < warmup; i++) fn();
  const samples: number[] = [];
  const start = process.hrtime.bigint();
  while (samples.length < maxRuns) {
    const t0 = process.hrtime.bigint();
    fn();
    samples.push(Number(process.hrtime.bigint() - t0) / 1e9);
    const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    if (samples.length >= minRuns && elapsed >= minSeconds) break;
  }
  samples.sort((a, b) => a - b);
  return { median: quantile(samples, 0.5), p10: quantile(samples, 0.1), p90: quantile(samples, 0.9), runs: samples.length };
}

export interface Machine {
  cpu: string;
  cores: number;
  isa: string;
  threads: number;
  backend: string;
  gpu?: string;
  node: string;
  commit: string;
  date: string;
}

export function machine(): Machine {
  const i = info();
  let commit = 'unknown';
  try {
    commit = execSync('git rev-parse --short HEAD', { cwd: packageRoot(), stdio: ['ignore', 'pipe', 'ignore'] })
      .toString()
      .trim();
    const dirty = execSync('git status --porcelain --untracked-files=no', { cwd: packageRoot() }).toString().trim();
    if (dirty) commit += '+dirty';
  } catch {
    // not a git checkout
  }
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/);
    if (m) cpu = m[1].trim();
  } catch {
    // not Linux
  }
  return {
    cpu,
    cores: i.cpu.physicalCores,
    isa: i.cpu.isa,
    threads: i.cpu.threads,
    backend: i.backend,
    gpu: i.gpu?.devices[0]?.name,
    node: process.version,
    commit,
    date: new Date().toISOString(),
  };
}

/** Prints rows as an aligned table (columns from the first row's keys). */
export function printTable(rows: Record<string, string | number>[], title?: string): void {
  if (title) console.log(`\n${title}`);
  if (!rows.length) return;
  const cols = Object.keys(rows[0]);
  const fmt = (v: string | number) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : v);
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => fmt(r[c] ?? '').length)));
  const line = (cells: string[]) => cells.map((s, k) => s.padStart(width[k])).join('  ');
  console.log(line(cols));
  console.log(line(width.map((w) => '-'.repeat(w))));
  for (const r of rows) console.log(line(cols.map((c) => fmt(r[c] ?? ''))));
}

/** Writes bench/results/<suite>-<device>.json (latest run; the commit and date are inside). */
export function writeResults(suite: string, payload: unknown, device = 'cpu'): string {
  const dir = path.join(packageRoot(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${suite}-${device}.json`);
  writeFileSync(file, JSON.stringify({ suite, machine: machine(), results: payload }, null, 2) + '\n');
  console.log(`\nwrote ${path.relative(packageRoot(), file)}`);
  return file;
}

/** Parses `--key value` / `--flag` options. */
export function parseArgs(args: string[]): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('--')) continue;
    const key = a.slice(2);
    const next = args[i + 1];
    if (next !== undefined && !next.startsWith('--')) {
      out[key] = next;
      i++;
    } else out[key] = true;
  }
  return out;
}
