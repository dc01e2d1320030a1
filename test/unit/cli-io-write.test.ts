/**
 * qimg io's write commands against qemu-io 7.2: the same command list on a
 * qimg-created image and on a qemu-created raw file prints the same lines
 * (timing aside) and leaves the same guest contents.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { maskIoTiming } from '../helpers/normalise.js';
import { qimgCommand } from '../helpers/cli.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const dir = tmpDir('qimg-io-write-');
const opts = { cwd: dir };
/** Timings and rates (human and -C forms) are wall-clock measurements; counts are kept. */
const noTiming = (s: string): string => maskIoTiming(s).replace(/^(\d+,\d+),[0-9:.]+,[0-9.]+,[0-9.]+$/gm, '$1,TIMING');
const cmds = (list: string[]): string[] => list.flatMap((c) => ['-c', c]);

function compareRun(fmt: 'qcow2' | 'qed', list: string[], oracleFmt = 'raw'): void {
  const name = `${fmt}-${Math.random().toString(36).slice(2)}`;
  assert.equal(qemuImg(['create', '-q', '-f', oracleFmt, `${name}.ref`, '2M'], opts).status, 0);
  const c = qimg(['create', '-q', '-f', fmt, `${name}.img`, '2M'], opts);
  assert.equal(c.status, 0, c.stderr);
  const q = qemuIo(['-f', oracleFmt, ...cmds(list), `${name}.ref`], opts);
  const i = qimg(['io', '-f', fmt, ...cmds(list), `${name}.img`], opts);
  assert.equal(noTiming(i.stdout), noTiming(q.stdout), `stdout for ${fmt}`);
  assert.equal(asQemu(i.stderr, 'qemu-io'), q.stderr, `stderr for ${fmt}`);
  assert.equal(i.status, q.status);
  const cmp = qemuImg(['compare', '-f', oracleFmt, '-F', fmt, `${name}.ref`, `${name}.img`], opts);
  assert.equal(cmp.stdout, 'Images are identical.\n', `${fmt}: ${cmp.stdout}${cmp.stderr}`);
  const chk = qemuImg(['check', '-f', fmt, `${name}.img`], opts);
  assert.equal(chk.status, 0, chk.stdout + chk.stderr);
}

const COMMON = [
  'write -P 0xab 0 64k',
  'write -z 64k 64k',
  'write -P 0x11 100k 3000',
  'write -z -u 0 4k',
  'write 256k 128k',
  'write -q -P 7 1M 4096',
  'flush',
  'write -C -P 9 1536k 512',
  'write 2M 512',
  'write 0',
  'write -P 300 0 1',
  'write -z -P 1 0 512',
  'write -u 0 512',
  'write -c -z 512k 64k',
  'write -s /nonexistent 0 512',
  'aio_write -P 5 8k 512 512',
  'aio_flush',
  'discard 3M 512',
  'discard -q 2M 1',
  'read -P 0xcd 256k 128k',
];

test('io write commands on qcow2 print what qemu-io prints and write the same bytes', (t) => {
  if (!requireTools(t)) return;
  compareRun('qcow2', [...COMMON, 'discard 256k 64k', 'discard 0 64k']);
});

test('io write commands on QED print what qemu-io prints and write the same bytes', (t) => {
  if (!requireTools(t)) return;
  compareRun('qed', COMMON);
});

test('compressed writes match qemu-io on qcow2', (t) => {
  if (!requireTools(t)) return;
  compareRun('qcow2', ['write -c -P 3 0 64k', 'write -c 0 64k', 'write -c 64k 512', 'write -c 100 512', 'write -c -P 4 1984k 64k', 'write -c 128k 192k', 'read -P 3 0 64k'], 'qcow2');
});

test('compressed writes on QED fail as in qemu-io', (t) => {
  if (!requireTools(t)) return;
  assert.equal(qemuImg(['create', '-q', '-f', 'qed', 'c.qed', '1M'], opts).status, 0);
  const q = qemuIo(['-f', 'qed', '-c', 'write -c 0 64k', 'c.qed'], opts);
  const i = qimg(['io', '-f', 'qed', '-c', 'write -c 0 64k', 'c.qed'], opts);
  assert.equal(i.stdout, q.stdout);
  assert.equal(i.status, q.status);
});

test('read-only opens refuse writes as qemu-io does', (t) => {
  if (!requireTools(t)) return;
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', 'ro.qcow2', '1M'], opts).status, 0);
  const list = cmds(['write 0 512', 'discard 0 512', 'write -z 0 512', 'flush', 'read 0 512']);
  const q = qemuIo(['-r', ...list, 'ro.qcow2'], opts);
  const i = qimg(['io', '-r', ...list, 'ro.qcow2'], opts);
  assert.equal(noTiming(i.stdout), noTiming(q.stdout));
  assert.equal(asQemu(i.stderr, 'qemu-io'), q.stderr);
  assert.equal(i.status, q.status);
});

test('abort dies with SIGABRT and leaves what was written', (t) => {
  if (!requireTools(t)) return;
  assert.equal(qimg(['create', '-q', '-f', 'qcow2', 'ab.qcow2', '1M'], opts).status, 0);
  const r = spawnSync(...qimgCommand(['io', '-c', 'write -P 1 0 64k', '-c', 'flush', '-c', 'abort', '-c', 'write -P 2 0 64k', 'ab.qcow2']), { cwd: dir, encoding: 'utf8' });
  assert.equal(r.signal, 'SIGABRT');
  assert.equal(r.stderr, '');
  // Lines are written as each command completes, so the first write's report is there.
  assert.match(r.stdout, /^wrote 65536\/65536 bytes at offset 0\n/);
  assert.doesNotMatch(r.stdout, /wrote .*\n.*\nwrote/);
  const chk = qemuImg(['check', 'ab.qcow2'], opts);
  assert.ok(chk.status === 0 || chk.status === 3, chk.stdout + chk.stderr);
  assert.equal(qemuIo(['-c', 'read -P 1 0 64k', 'ab.qcow2'], opts).stdout.split('\n')[0], 'read 65536/65536 bytes at offset 0');
});
