/**
 * Training output: a JSONL log (one JSON object per line, appended and flushed per record, so a crashed run
 * keeps everything up to its last step) and a progress display that redraws one line on a terminal
 * (tokens/s, loss, ETA) and prints plain lines every `every` steps otherwise (CI logs, pipes).
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import { checkInt, isObject, showValue } from '../errors.js';

export class JsonlLog {
  readonly file: string;
  constructor(file: string, opts: { append?: boolean } = {}) {
    if (typeof file !== 'string' || file.length === 0) throw new TypeError(`JsonlLog: file must be a non-empty string (a path), got ${showValue(file)}`);
    if (!isObject(opts)) throw new TypeError(`JsonlLog: opts must be an object ({ append?: boolean }), got ${showValue(opts)}`);
    if (opts.append !== undefined && typeof opts.append !== 'boolean') throw new TypeError(`JsonlLog: opts.append must be a boolean, got ${showValue(opts.append)}`);
    this.file = file;
    mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    if (!opts.append) appendFileSync(file, '', { flag: 'w' });
  }
  write(record: Record<string, unknown>): void {
    if (!isObject(record)) throw new TypeError(`JsonlLog.write: record must be an object, got ${showValue(record)}`);
    appendFileSync(this.file, JSON.stringify({ time: new Date().toISOString(), ...record }) + '\n');
  }
}

/** Formats seconds as h:mm:ss / m:ss. */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(s: string): unknown;
}

export class Progress {
  readonly total: number;
  readonly label: string;
  readonly tty: boolean;
  readonly every: number;
  readonly stream: ProgressStream;
  #start = Date.now();
  #startStep = 0;
  #lastDraw = 0;
  #dirty = false;

  constructor(total: number, opts: { label?: string; stream?: ProgressStream; tty?: boolean; every?: number; startStep?: number } = {}) {
    const op = 'Progress';
    if (typeof total !== 'number' || !Number.isSafeInteger(total) || total < 1)
      throw new RangeError(`${op}: total must be an integer ≥ 1 (steps), got ${showValue(total)}`);
    if (!isObject(opts)) throw new TypeError(`${op}: opts must be an object ({ label?, stream?, tty?, every?, startStep? }), got ${showValue(opts)}`);
    if (opts.label !== undefined && typeof opts.label !== 'string') throw new TypeError(`${op}: opts.label must be a string, got ${showValue(opts.label)}`);
    if (opts.stream !== undefined && !(isObject(opts.stream) && typeof opts.stream.write === 'function'))
      throw new TypeError(`${op}: opts.stream must be an object with a write(s) method, got ${showValue(opts.stream)}`);
    if (opts.tty !== undefined && typeof opts.tty !== 'boolean') throw new TypeError(`${op}: opts.tty must be a boolean, got ${showValue(opts.tty)}`);
    if (opts.every !== undefined) checkInt(opts.every, `${op}: opts.every`, 1);
    if (opts.startStep !== undefined) checkInt(opts.startStep, `${op}: opts.startStep`, 0);
    this.total = total;
    this.label = opts.label ?? '';
    this.stream = opts.stream ?? process.stderr;
    this.tty = opts.tty ?? Boolean(this.stream.isTTY);
    this.every = opts.every ?? Math.max(1, Math.round(total / 20));
    this.#startStep = opts.startStep ?? 0;
  }

  /** Reports step `step` (1-based count of finished steps) with the tokens done since the start. */
  update(step: number, info: { loss?: number; lossLabel?: string; tokens?: number; extra?: string }): void {
    const op = 'Progress.update';
    checkInt(step, `${op}: step`, 0);
    if (!isObject(info)) throw new TypeError(`${op}: info must be an object ({ loss?, lossLabel?, tokens?, extra? }), got ${showValue(info)}`);
    for (const f of ['loss', 'tokens'] as const)
      if (info[f] !== undefined && typeof info[f] !== 'number') throw new TypeError(`${op}: info.${f} must be a number, got ${showValue(info[f])}`);
    for (const f of ['lossLabel', 'extra'] as const)
      if (info[f] !== undefined && typeof info[f] !== 'string') throw new TypeError(`${op}: info.${f} must be a string, got ${showValue(info[f])}`);
    const elapsed = (Date.now() - this.#start) / 1000;
    const done = step - this.#startStep;
    const rate = done > 0 ? elapsed / done : NaN;
    const eta = rate * (this.total - step);
    const tps = info.tokens !== undefined && elapsed > 0 ? info.tokens / elapsed : NaN;
    const parts = [
      `${this.label ? this.label + ' ' : ''}step ${step}/${this.total}`,
      info.loss !== undefined ? `${info.lossLabel ?? 'loss'} ${info.loss.toFixed(4)}` : '',
      Number.isFinite(tps) ? `${Math.round(tps)} tok/s` : '',
      `ETA ${formatDuration(eta)}`,
      info.extra ?? '',
    ].filter(Boolean);
    if (this.tty) {
      const now = Date.now();
      if (now - this.#lastDraw < 100 && step !== this.total) return;
      this.#lastDraw = now;
      const width = Math.max(10, Math.min(30, (this.stream.columns ?? 80) - 70));
      const filled = Math.round((width * step) / this.total);
      const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
      this.stream.write(`\r\x1b[2K${bar} ${parts.join('  ')}`);
      this.#dirty = true;
    } else if (step % this.every === 0 || step === this.total) {
      this.stream.write(parts.join('  ') + '\n');
    }
  }

  /** Prints a message above the bar (evaluation results). */
  note(msg: string): void {
    if (typeof msg !== 'string') throw new TypeError(`Progress.note: msg must be a string, got ${showValue(msg)}`);
    if (this.tty && this.#dirty) this.stream.write('\r\x1b[2K');
    this.stream.write(msg + '\n');
  }

  done(): void {
    if (this.tty && this.#dirty) this.stream.write('\n');
    this.#dirty = false;
  }
}
