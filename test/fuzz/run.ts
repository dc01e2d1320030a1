/**
 * npm run fuzz: FUZZ_SECONDS (default 60) or FUZZ_RUNS cases from FUZZ_SEED
 * (default 1). FUZZ_CLI_EVERY sends every n-th case through the compiled CLI
 * (default 200; 0 turns it off). Findings go to test/fuzz/findings/, or
 * to FUZZ_FINDINGS_DIR.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runFuzz } from './engine.js';
import { haveQemu, makeSeeds } from './seeds.js';
import { qimgMain } from '../helpers/cli.js';

const env = (k: string): number | undefined => (process.env[k] === undefined || process.env[k] === '' ? undefined : Number(process.env[k]));

async function main(): Promise<number> {
  if (!haveQemu()) {
    console.error('fuzz: qemu-img and qemu-io are needed to make the seed images');
    return 2;
  }
  const runs = env('FUZZ_RUNS');
  const seconds = env('FUZZ_SECONDS') ?? (runs === undefined ? 60 : undefined);
  const seed = env('FUZZ_SEED') ?? 1;
  const cliEvery = env('FUZZ_CLI_EVERY') ?? 200;
  // Compile the CLI now if dist/ is stale, before the workers start sending cases through it.
  if (cliEvery > 0) qimgMain();
  const findingsDir = process.env.FUZZ_FINDINGS_DIR || join(dirname(fileURLToPath(import.meta.url)), 'findings');
  const t0 = Date.now();
  const seeds = makeSeeds();
  console.log(`fuzz: ${seeds.length} seed images in ${Date.now() - t0} ms; seed ${seed}, ${runs !== undefined ? `${runs} runs` : ''}${seconds !== undefined ? ` ${seconds} s` : ''}`);
  const s = await runFuzz({ seeds, seed, runs, seconds, cliEvery, findingsDir, log: (l) => console.log(l), progressMs: 10_000 });
  console.log(`fuzz: ${s.executions} executions in ${s.seconds.toFixed(1)} s (${s.execsPerSecond.toFixed(1)}/s), ${s.cliRuns} CLI runs, ${s.findingCases} failing cases, ${s.findings.length} unique findings, peak RSS ${Math.round(s.peakRss / 2 ** 20)} MiB, ${s.workerRestarts} worker restarts`);
  for (const [t, v] of Object.entries(s.targets)) console.log(`  ${t.padEnd(11)} runs ${v.runs}, ImageErrors ${v.errors}, ${(v.ms / Math.max(1, v.runs)).toFixed(2)} ms avg, slowest ${v.maxMs.toFixed(0)} ms (case ${v.slowestCase})`);
  for (const f of s.findings) console.log(`  [${f.count}x] ${f.signature}\n      ${f.error?.message.split('\n')[0]}\n      ${f.dir ?? ''}`);
  return s.findings.length > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e);
    process.exit(2);
  },
);
