/**
 * qimg commit against qemu-img commit: the same command on twin copies of
 * chains qemu made (qcow2 v2 and v3, QED, raw bases, chains of three,
 * compressed and zero clusters). Every image of the chain ends with the
 * same info and guest content, passes qemu-img check, and the top's map
 * (emptied, or kept with -d / -b) is qemu's; the base reads as the top did
 * before. Failures print the same messages with the same exit codes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { lockingAvailable } from '../../src/io/locks.js';
import { asQemu, qemuImg, qimg, requireTools } from '../helpers/tools.js';
import { assertSameImage, assertSameOutput, twinRun } from '../helpers/side-by-side.js';
import { dirtyMap, haveNbdTools } from '../helpers/dirty-map.js';

const CHAIN = `
qemu-img create -q -f qcow2 base.qcow2 4M; qemu-io -c 'write -P 1 0 2M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2; qemu-io -c 'write -P 2 1M 1M' -c 'write -z 0 64k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2; qemu-io -c 'write -P 3 1536k 4k' -c 'write -z 3M 64k' -c 'write -c -P 4 2M 64k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.expected; cp mid.qcow2 mid.orig
`;

const V2 = `
qemu-img create -q -f qcow2 -o compat=0.10 base.qcow2 4M; qemu-io -c 'write -P 1 0 3M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top.qcow2; qemu-io -c 'write -P 3 100k 300k' -c 'write -z 2M 128k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.expected
`;

const RAW_BASE = `
qemu-img create -q -f raw base.raw 4M; qemu-io -f raw -c 'write -P 1 0 1M' base.raw >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.raw -F raw top.qcow2; qemu-io -c 'write -P 3 512k 8k' -c 'write -z 768k 4k' -c 'write -P 5 3M 64k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.expected
`;

const QED = `
qemu-img create -q -f qed base.qed 4M; qemu-io -c 'write -P 1 0 2M' base.qed >/dev/null
qemu-img create -q -f qed -b base.qed -F qed top.qed; qemu-io -c 'write -P 3 1M 2M' top.qed >/dev/null
qemu-img convert -O raw top.qed top.expected
`;

// The top is larger than its base: the commit grows the base first, as qemu's commit job does.
const SMALL_BASE = `
qemu-img create -q -f qcow2 base.qcow2 1M; qemu-io -c 'write -P 1 0 1M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M; qemu-io -c 'write -P 3 3M 64k' -c 'write -P 4 512k 4k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.expected
`;

const SMALL_RAW_BASE = `
qemu-img create -q -f raw base.raw 1M; qemu-io -f raw -c 'write -P 1 0 1M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 3M; qemu-io -c 'write -P 3 2M 64k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.expected
`;

// The base carries persistent bitmaps: the enabled one records the committed writes, the disabled one does not.
const BITMAP_BASE = `
qemu-img create -q -f qcow2 base.qcow2 4M; qemu-io -c 'write -P 1 0 1M' base.qcow2 >/dev/null
qemu-img bitmap --add base.qcow2 on; qemu-img bitmap --add base.qcow2 off; qemu-img bitmap --disable base.qcow2 off
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2; qemu-io -c 'write -P 3 2M 128k' -c 'write -z 512k 64k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.expected
`;

const cases: Array<{ name: string; setup: string; args: string[]; top: string; base: string; others?: string[]; topMap?: boolean; bitmaps?: string[] }> = [
  { name: 'qcow2 v3 chain of three into its backing file (top emptied)', setup: CHAIN, args: ['top.qcow2'], top: 'top.qcow2', base: 'mid.qcow2', others: ['base.qcow2'] },
  { name: 'with -d the top keeps its data', setup: CHAIN, args: ['-d', 'top.qcow2'], top: 'top.qcow2', base: 'mid.qcow2', others: ['base.qcow2'] },
  { name: '-b names the direct backing file (implies -d)', setup: CHAIN, args: ['-b', 'mid.qcow2', 'top.qcow2'], top: 'top.qcow2', base: 'mid.qcow2' },
  // The base frees a cluster that qemu reuses at once and qimg after the flush: the base's layout differs, so the top's map (which shows it) is not compared.
  { name: '-b through an intermediate layer', setup: CHAIN, args: ['-b', 'base.qcow2', 'top.qcow2'], top: 'top.qcow2', base: 'base.qcow2', others: ['mid.qcow2'], topMap: false },
  { name: 'qcow2 v2 (emptied by discarding)', setup: V2, args: ['top.qcow2'], top: 'top.qcow2', base: 'base.qcow2' },
  { name: 'qcow2 over a raw base', setup: RAW_BASE, args: ['-q', 'top.qcow2'], top: 'top.qcow2', base: 'base.raw' },
  { name: 'QED (which qemu cannot empty)', setup: QED, args: ['top.qed'], top: 'top.qed', base: 'base.qed' },
  { name: 'into a smaller qcow2 base (grown first)', setup: SMALL_BASE, args: ['top.qcow2'], top: 'top.qcow2', base: 'base.qcow2' },
  { name: 'into a smaller raw base (grown first)', setup: SMALL_RAW_BASE, args: ['top.qcow2'], top: 'top.qcow2', base: 'base.raw' },
  { name: 'into a base with persistent bitmaps', setup: BITMAP_BASE, args: ['top.qcow2'], top: 'top.qcow2', base: 'base.qcow2', bitmaps: ['on', 'off'] },
  { name: 'rate limited, unsafe cache', setup: CHAIN, args: ['-r', '100M', '-t', 'unsafe', 'top.qcow2'], top: 'top.qcow2', base: 'mid.qcow2' },
];

for (const c of cases) {
  test(`commit: ${c.name}`, (t) => {
    if (!requireTools(t)) return;
    const twins = twinRun(c.setup, ['commit', ...c.args]);
    assertSameOutput(twins);
    assert.equal(twins.oursRun.status, 0);
    assertSameImage(twins, c.top, { map: c.topMap ?? true });
    assertSameImage(twins, c.base);
    for (const o of c.others ?? []) assertSameImage(twins, o);
    // The base now reads as the top did (over the base's own size).
    const r = qemuImg(['compare', '-U', c.base, 'top.expected'], { cwd: twins.ours });
    assert.equal(r.status, 0, `${c.base} after commit: ${r.stdout}${r.stderr}`);
    // The top still reads the same through the chain.
    const topNow = qemuImg(['compare', '-U', c.top, 'top.expected'], { cwd: twins.ours });
    assert.equal(topNow.status, 0, `${c.top} after commit: ${topNow.stdout}${topNow.stderr}`);
    // The base's bitmaps record exactly what qemu's commit records in them.
    for (const b of c.bitmaps ?? []) {
      if (!haveNbdTools) assert.fail('qemu-nbd and nbdinfo are needed to read bitmaps');
      assert.equal(dirtyMap(join(twins.ours, c.base), b), dirtyMap(join(twins.qemu, c.base), b), `bitmap ${b} of ${c.base}`);
    }
  });
}

test('commit -b a base further down leaves the middle layer file untouched', (t) => {
  if (!requireTools(t)) return;
  const twins = twinRun(CHAIN, ['commit', '-b', 'base.qcow2', 'top.qcow2']);
  assert.equal(twins.oursRun.status, 0, twins.oursRun.stderr);
  assert.ok(readFileSync(join(twins.ours, 'mid.qcow2')).equals(readFileSync(join(twins.ours, 'mid.orig'))));
});

const failures: string[][] = [
  ['-b', 'nosuch', 'top.qcow2'],
  ['-b', 'top.qcow2', 'top.qcow2'],
  ['base.qcow2'],
  ['-r', 'x', 'top.qcow2'],
  ['-t', 'foo', 'top.qcow2'],
  ['nosuch'],
  [],
  ['top.qcow2', 'mid.qcow2'],
  ['-f', 'qed', 'top.qcow2'],
  ['-c', 'top.qcow2'],
];

for (const args of failures) {
  test(`commit fails as qemu-img does: ${args.join(' ') || '(no arguments)'}`, (t) => {
    if (!requireTools(t)) return;
    const twins = twinRun(CHAIN, ['commit', ...args]);
    assertSameOutput(twins);
    assert.notEqual(twins.oursRun.status, 0);
    for (const f of ['top.qcow2', 'mid.qcow2', 'base.qcow2']) assertSameImage(twins, f, { map: true });
  });
}

test('commit into a base another process has open fails with qemu-img lock message', async (t) => {
  if (!requireTools(t)) return;
  if (!lockingAvailable()) {
    if (process.env.CI) throw new Error('the ofdlock addon is required when CI is set (npm install builds it)');
    t.skip('ofdlock addon not built (npm install builds it)');
    return;
  }
  const { spawn } = await import('node:child_process');
  const twins = twinRun(CHAIN, ['info', 'top.qcow2']);
  const results = [];
  for (const [dir, run] of [[twins.qemu, qemuImg], [twins.ours, qimg]] as const) {
    // qemu-io holds mid.qcow2 read-only (refusing to share write) while it waits on stdin.
    const holder = spawn('qemu-io', ['-r', 'mid.qcow2'], { cwd: dir, stdio: ['pipe', 'ignore', 'ignore'] });
    await new Promise((r) => setTimeout(r, 500));
    results.push(run(['commit', 'top.qcow2'], { cwd: dir }));
    holder.stdin.end();
    await new Promise((r) => holder.on('exit', r));
  }
  const [q, ours] = results;
  assert.equal(q!.status, 1);
  assert.match(q!.stderr, /Failed to get "write" lock/);
  assert.equal(asQemu(ours!.stderr), q!.stderr);
  assert.equal(ours!.status, q!.status);
  // Nothing was written: the top keeps its data.
  assertSameImage(twins, 'top.qcow2', { map: true });
});
