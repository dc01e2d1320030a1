/**
 * A short, fixed-seed fuzz run (test/fuzz): mutated qcow2, QED and raw
 * images through open, info, read, map, check, convert and write, and a few
 * through the CLI. Any exception other than an ImageError, a hang, a memory
 * blow-up or a CLI crash fails the test; `npm run fuzz` runs the same thing
 * for longer and saves what it finds.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runFuzz } from '../fuzz/engine.js';
import { haveQemu, makeSeeds } from '../fuzz/seeds.js';
import { qimgMain } from '../helpers/cli.js';

const qemu = haveQemu();
if (!qemu && process.env.CI) throw new Error('qemu-img/qemu-io are required when CI is set');

test('fuzz: 2500 mutated images (seed 20240601) end in an ImageError or succeed', { skip: !qemu && 'qemu-img/qemu-io not installed', timeout: 180_000 }, async () => {
  qimgMain(); // compiled before the workers run cases through it
  const seeds = makeSeeds();
  const s = await runFuzz({
    seeds,
    seed: 20240601,
    runs: 2500,
    // A bound for slow machines; the run is deterministic up to where it stops.
    seconds: 45,
    cliEvery: 500,
  });
  const report = s.findings.map((f) => `${f.signature} (case ${f.iteration}, ${f.seedImage}): ${f.error?.message}\n  edits: ${f.minimisedEdits.map((e) => e.why).join('; ')}`);
  assert.deepEqual(report, []);
  // The run is time-boxed and shares two cores with another test file: a floor that shows it ran, not a speed.
  assert.ok(s.executions >= 250, `only ${s.executions} executions`);
});
