#!/usr/bin/env node
/** The `sparse-ffn` command line: info, bench, start (and train/compare/generate once training lands). */
import { formatInfo, info } from './info.js';

const HELP = `usage: sparse-ffn <command> [options]

commands:
  info [--json]       backend chosen and why, CPU features, threads, GPU
  bench <suite>       run a benchmark suite (same as npm run bench -- <suite>)
  start               the main job of \`npm start\`
`;

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
    case 'start': {
      console.log(formatInfo());
      const { runBench } = await import('../bench/index.js');
      return runBench(['gemm', '--quick']);
    }
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

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
    process.exit(1);
  },
);
