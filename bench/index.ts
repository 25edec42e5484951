/**
 * Benchmark entry: `npm run bench -- <suite> [options]`. Each suite prints a table and writes JSON to
 * bench/results/<suite>-<date>.json with the machine, the commit and medians of repeated runs.
 */
const suites: Record<string, () => Promise<{ run(args: string[]): Promise<void> }>> = {};

/** Suites register here (kept as lazy imports so one broken suite cannot stop the others). */
export function registerSuite(name: string, load: () => Promise<{ run(args: string[]): Promise<void> }>): void {
  suites[name] = load;
}

export async function runBench(argv: string[]): Promise<number> {
  const { SUITES } = await import('./suites.js');
  for (const [name, load] of Object.entries(SUITES)) registerSuite(name, load);
  const [name, ...args] = argv;
  if (!name || !suites[name]) {
    console.error(`usage: npm run bench -- <${Object.keys(suites).join('|') || 'suite'}> [options]`);
    return name ? 2 : 1;
  }
  const suite = await suites[name]();
  await suite.run(args);
  return 0;
}

// Run directly: node --single-threaded-gc dist/bench/index.js <suite> ... (see collectGarbage in harness.ts)
if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/\\/g, '/'))) {
  runBench(process.argv.slice(2)).then(
    (c) => process.exit(c),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
}
