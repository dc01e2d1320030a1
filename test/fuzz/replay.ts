/**
 * Replay a case in process and print each target's outcome (with the stack
 * of a finding):
 *   node --import tsx test/fuzz/replay.ts <finding.json> [target] [--full]
 *   node --import tsx test/fuzz/replay.ts --case <fuzz seed>:<iteration> [target]
 * A finding replays its minimised edits unless --full is given.
 */
import { readFileSync } from 'node:fs';
import { analyse, applyEdits, mix, mutate, Rng, type Edit } from './mutate.js';
import { makeSeeds } from './seeds.js';
import { runTarget, TARGET_NAMES, type TargetName } from './targets.js';

const args = process.argv.slice(2);
const full = args.includes('--full');
const caseArg = args.indexOf('--case');
const positional = args.filter((a, i) => !a.startsWith('--') && (caseArg < 0 || i !== caseArg + 1));
let fuzzSeed: number;
let iteration: number;
let saved: Edit[] | undefined;
if (caseArg >= 0) {
  [fuzzSeed, iteration] = args[caseArg + 1]!.split(':').map(Number) as [number, number];
} else {
  const f = JSON.parse(readFileSync(positional.shift()!, 'utf8')) as { edits: Edit[]; minimisedEdits: Edit[]; iteration: number; fuzzSeed: number };
  fuzzSeed = f.fuzzSeed;
  iteration = f.iteration;
  saved = full ? f.edits : f.minimisedEdits;
}
const only = positional[0];

// Exactly the engine's derivation of case `iteration`.
const seeds = makeSeeds();
const rng = new Rng(mix(fuzzSeed, iteration));
const seed = seeds[rng.int(seeds.length)]!;
const drawn = mutate(seed, analyse(seed), rng);
const caseSeed = rng.int(0x1_0000_0000);
const edits = saved ?? drawn;
console.log(`case ${fuzzSeed}:${iteration} on ${seed.name}`);
for (const e of edits) console.log('  edit:', e.why);
const c = { file: seed.file, format: seed.format, bytes: applyEdits(seed.bytes, edits), sidecars: seed.sidecars, caseSeed };
for (const t of TARGET_NAMES) {
  if (only && t !== only) continue;
  const r = await runTarget(t as TargetName, c, 60_000);
  console.log(`${t}: ${r.ms.toFixed(1)} ms ${r.finding ?? ''} ${r.error ? `${r.error.name}${r.error.code ? `(${r.error.code})` : ''}: ${r.error.message}` : 'ok'}`);
  if (r.finding && r.error?.stack) console.log(r.error.stack.split('\n').slice(0, 14).join('\n'));
}
process.exit(0);
