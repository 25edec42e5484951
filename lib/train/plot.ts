/**
 * Dependency-free SVG: loss curves (several series on shared axes) and expert-usage histograms (one panel
 * per model, bars = share of selections per expert/slot, sorted descending, with the uniform share dashed).
 */
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export interface Series {
  name: string;
  points: [number, number][];
}

function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** A line chart panel at (x0, y0) of size w×h, as SVG elements. */
function linePanel(series: Series[], x0: number, y0: number, w: number, h: number, title: string, xLabel: string, yLabel: string): string {
  const pts = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const xmin = Math.min(...xs, 0);
  const xmax = Math.max(...xs, 1);
  let ymin = Math.min(...ys);
  let ymax = Math.max(...ys);
  if (!Number.isFinite(ymin)) [ymin, ymax] = [0, 1];
  if (ymax === ymin) ymax = ymin + 1;
  const L = 60, R = 150, T = 30, B = 45;
  const px = (x: number): number => x0 + L + ((x - xmin) / (xmax - xmin || 1)) * (w - L - R);
  const py = (y: number): number => y0 + h - B - ((y - ymin) / (ymax - ymin)) * (h - T - B);
  const el: string[] = [];
  el.push(`<text x="${x0 + w / 2}" y="${y0 + 18}" text-anchor="middle" font-size="14" font-weight="bold">${esc(title)}</text>`);
  for (const t of niceTicks(ymin, ymax)) {
    el.push(`<line x1="${x0 + L}" x2="${x0 + w - R}" y1="${py(t)}" y2="${py(t)}" stroke="#ddd"/>`);
    el.push(`<text x="${x0 + L - 6}" y="${py(t) + 4}" text-anchor="end" font-size="11">${t}</text>`);
  }
  for (const t of niceTicks(xmin, xmax)) el.push(`<text x="${px(t)}" y="${y0 + h - B + 16}" text-anchor="middle" font-size="11">${t}</text>`);
  el.push(`<rect x="${x0 + L}" y="${y0 + T}" width="${w - L - R}" height="${h - T - B}" fill="none" stroke="#444"/>`);
  el.push(`<text x="${x0 + L + (w - L - R) / 2}" y="${y0 + h - 8}" text-anchor="middle" font-size="12">${esc(xLabel)}</text>`);
  el.push(`<text transform="translate(${x0 + 16},${y0 + h / 2}) rotate(-90)" text-anchor="middle" font-size="12">${esc(yLabel)}</text>`);
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const d = s.points.filter(([, y]) => Number.isFinite(y)).map(([x, y], j) => `${j ? 'L' : 'M'}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join('');
    if (d) el.push(`<path d="${d}" fill="none" stroke="${c}" stroke-width="1.6"/>`);
    el.push(`<line x1="${x0 + w - R + 10}" x2="${x0 + w - R + 30}" y1="${y0 + T + 10 + i * 18}" y2="${y0 + T + 10 + i * 18}" stroke="${c}" stroke-width="3"/>`);
    el.push(`<text x="${x0 + w - R + 36}" y="${y0 + T + 14 + i * 18}" font-size="12">${esc(s.name)}</text>`);
  });
  return el.join('\n');
}

export interface Histogram {
  name: string;
  /** Selections per expert or slot (one layer, or summed over layers). */
  counts: number[];
}

function histPanel(hg: Histogram, x0: number, y0: number, w: number, h: number): string {
  const total = hg.counts.reduce((a, b) => a + b, 0) || 1;
  const share = hg.counts.map((c) => c / total).sort((a, b) => b - a);
  const n = share.length;
  const L = 50, R = 10, T = 24, B = 30;
  const ymax = Math.max(...share, 1 / Math.max(n, 1)) * 1.1;
  const bw = (w - L - R) / Math.max(n, 1);
  const py = (y: number): number => y0 + h - B - (y / ymax) * (h - T - B);
  const el: string[] = [];
  el.push(`<text x="${x0 + w / 2}" y="${y0 + 16}" text-anchor="middle" font-size="12" font-weight="bold">${esc(hg.name)}</text>`);
  share.forEach((s, i) => {
    el.push(`<rect x="${(x0 + L + i * bw).toFixed(2)}" y="${py(s).toFixed(2)}" width="${Math.max(bw - (n <= 64 ? 1 : 0), 0.3).toFixed(2)}" height="${(y0 + h - B - py(s)).toFixed(2)}" fill="#1f77b4"/>`);
  });
  const u = py(1 / Math.max(n, 1));
  el.push(`<line x1="${x0 + L}" x2="${x0 + w - R}" y1="${u}" y2="${u}" stroke="#d62728" stroke-dasharray="4 3"/>`);
  for (const t of niceTicks(0, ymax, 4)) el.push(`<text x="${x0 + L - 4}" y="${py(t) + 4}" text-anchor="end" font-size="10">${t}</text>`);
  el.push(`<rect x="${x0 + L}" y="${y0 + T}" width="${w - L - R}" height="${h - T - B}" fill="none" stroke="#444"/>`);
  el.push(`<text x="${x0 + L + (w - L - R) / 2}" y="${y0 + h - 8}" text-anchor="middle" font-size="11">${n} experts/slots, sorted by share (dashed: uniform)</text>`);
  return el.join('\n');
}

/** The compare figure: loss curves (train and valid) on top, one usage histogram per sparse model below. */
export function compareSvg(opts: { train: Series[]; valid: Series[]; histograms: Histogram[]; title?: string }): string {
  const W = 1000;
  const lineH = 340;
  const cols = 3;
  const histH = 200;
  const rows = Math.ceil(opts.histograms.length / cols);
  const H = 2 * lineH + rows * histH + 20;
  const el = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    linePanel(opts.train, 0, 0, W, lineH, opts.title ?? 'Training loss', 'step', 'train loss (bits/byte)'),
    linePanel(opts.valid, 0, lineH, W, lineH, 'Validation', 'step', 'valid bits/byte'),
  ];
  opts.histograms.forEach((hg, i) => el.push(histPanel(hg, (i % cols) * (W / cols), 2 * lineH + Math.floor(i / cols) * histH, W / cols, histH)));
  el.push('</svg>');
  return el.join('\n');
}
