/**
 * The --fast subset of QEMU's qemu-iotests (npm run iotests -- --fast) with
 * qimg standing in for qemu-img and qemu-io. It needs QEMU's test suite,
 * fetched with apt-get source into .iotests-cache/: when CI is set the run
 * fetches it and any failure fails the test; elsewhere the test runs only
 * once a full `npm run iotests` has fetched it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { IOTESTS_DIR, CACHE_DIR, REPO_ROOT } from '../../scripts/iotests/paths.js';
import { FAST } from '../../scripts/iotests/select.js';
import { requireTools } from '../helpers/tools.js';

test('qemu-iotests --fast subset passes with qimg as qemu-img and qemu-io', { timeout: 15 * 60_000 }, (t) => {
  if (!requireTools(t)) return;
  if (!process.env.CI && !existsSync(join(IOTESTS_DIR, 'check'))) {
    t.skip('QEMU iotests not fetched (run npm run iotests once, or set CI)');
    return;
  }
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'scripts', 'iotests', 'main.ts'), '--fast', '--tools', 'qimg'], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    timeout: 14 * 60_000,
  });
  assert.equal(r.status, 0, `iotests --fast failed:\n${r.stdout}\n${r.stderr}`);
  const report = JSON.parse(readFileSync(join(CACHE_DIR, 'results', 'results-fast.json'), 'utf8')) as { rows: Array<{ test: string; format: string; qimg?: { status: string } }> };
  assert.equal(report.rows.length, FAST.length, 'every fast case ran');
  for (const row of report.rows) assert.equal(row.qimg?.status, 'pass', `${row.test} ${row.format}`);
});
