/**
 * qimg io against qemu-io 7.2, command by command: the same scripts on two
 * copies of one image (qcow2, QED, raw) print the same stdout and stderr
 * (timings masked), end with the same status and leave the same guest data.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { qimgCommand } from '../helpers/cli.js';
import { maskIoTiming } from '../helpers/normalise.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const dir = tmpDir('qimg-io-commands-');
const opts = { cwd: dir };
// Each tool works on its own copy under the same name, so messages naming the file compare too.
const qDir = { cwd: join(dir, 'q') };
const iDir = { cwd: join(dir, 'i') };
mkdirSync(qDir.cwd);
mkdirSync(iDir.cwd);
const noTiming = (s: string): string => maskIoTiming(s).replace(/^(\d+,\d+),[0-9:.]+,[0-9.]+,[0-9.]+$/gm, '$1,TIMING');
const cmds = (list: string[]): string[] => list.flatMap((c) => ['-c', c]);
type Fmt = 'qcow2' | 'qed' | 'raw';
const FORMATS: Fmt[] = ['qcow2', 'qed', 'raw'];

let n = 0;
/** A fresh image made by qemu-img, and a byte copy of it for qimg (same name, other directory). */
function imagePair(fmt: Fmt, size = '4M'): { ref: string; img: string; name: string } {
  const name = `t${++n}.${fmt}`;
  const c = qemuImg(['create', '-q', '-f', fmt, name, size], qDir);
  assert.equal(c.status, 0, c.stderr);
  copyFileSync(join(qDir.cwd, name), join(iDir.cwd, name));
  return { ref: `q/${name}`, img: `i/${name}`, name };
}

/** Run `args` (image last) through both tools on their own copy; compare every byte they print. */
function same(fmt: Fmt, args: string[], pair = imagePair(fmt), what = args.join(' ')): { ref: string; img: string; name: string } {
  const q = qemuIo([...args, pair.name], qDir);
  const i = qimg(['io', ...args, pair.name], iDir);
  assert.equal(noTiming(i.stdout), noTiming(q.stdout), `stdout of ${what} (${fmt})`);
  assert.equal(asQemu(i.stderr, 'qemu-io'), q.stderr, `stderr of ${what} (${fmt})`);
  assert.equal(i.status, q.status, `status of ${what} (${fmt})`);
  return pair;
}

function identical(fmt: Fmt, pair: { ref: string; img: string; name: string }): void {
  const cmp = qemuImg(['compare', '-f', fmt, '-F', fmt, pair.ref, pair.img], opts);
  assert.equal(cmp.stdout, 'Images are identical.\n', cmp.stdout + cmp.stderr);
  if (fmt !== 'raw') {
    const chk = qemuImg(['check', '-f', fmt, pair.img], opts);
    assert.equal(chk.status, 0, chk.stdout + chk.stderr);
  }
}

const VECTORED = [
  'writev -P 0x5a 512 512 1k',
  'writev -q -P 3 64k 4k 4k 4k',
  'writev -C -P 4 128k 512',
  'writev 4M 512',
  'writev 0 3G',
  'writev 0 1G 1G 1G',
  'writev 0 1x',
  'writev -z 0 512',
  'readv -v 496 16 16 16',
  'readv -P 0x5a 512 512 1k',
  'readv -P 0x5b 512 1536',
  'readv -q -P 3 64k 12k',
  'readv 4M 512',
  'readv 0',
  // qemu-io reports an aio request when the event loop next runs; one request in flight at a time keeps the order defined.
  'aio_write -P 6 1M 4k 4k',
  'aio_flush',
  'aio_write -z 2M 64k',
  'aio_flush',
  'aio_write -z 2M 64k 64k',
  'aio_write -u 0 512',
  'aio_write -i 0 512',
  'aio_write 4M 512',
  'aio_flush',
  'aio_read -P 6 1M 8k',
  'aio_flush',
  'aio_read -P 7 1M 8k',
  'aio_flush',
  'aio_read -i 0 512',
  'aio_read -v 1M 32',
  'aio_flush',
  'aio_read 4M 512',
  'aio_flush',
];

for (const fmt of FORMATS) {
  test(`readv, writev, aio_read and aio_write on ${fmt} as qemu-io`, (t) => {
    if (!requireTools(t)) return;
    identical(fmt, same(fmt, ['-f', fmt, ...cmds(VECTORED)]));
  });
}

const SESSION = [
  'help',
  'help read',
  'help open',
  'help q',
  'help map',
  'help nosuch',
  'nosuch 1 2',
  'write -P 1 0 64k',
  'close',
  'read 0 512',
  'length',
  'close',
  'sleep 1',
  'sleep 1x',
  'sigraise 99',
  'sigraise x',
  'sigraise 0',
  'open',
  'open -o driver=raw',
  // Without a blkdebug node every breakpoint command fails (wait_break is left out: qemu-io waits forever).
  'break l2_load a',
  'remove_break a',
  'resume a',
];

for (const fmt of FORMATS) {
  test(`help, close, sleep and sigraise on ${fmt} as qemu-io`, (t) => {
    if (!requireTools(t)) return;
    identical(fmt, same(fmt, ['-f', fmt, ...cmds(SESSION)]));
  });
}

test('open, reopen and their refusals as qemu-io', (t) => {
  if (!requireTools(t)) return;
  for (const fmt of FORMATS) {
    const pair = imagePair(fmt);
    const name = pair.name;
    const list = [
      'close',
      `open -r -o driver=${fmt} ${name}`,
      `open -o driver=${fmt} ${name}`,
      'write -P 2 0 4k',
      'reopen -w',
      'write -P 2 0 4k',
      'reopen -r',
      'write 0 4k',
      'reopen -r -w',
      'reopen -c foo',
      'reopen -o foo=bar',
      'read -P 2 0 4k',
      'close',
      `open -t foo ${name}`,
      `open -d foo ${name}`,
      `open -i foo ${name}`,
      `open -i native ${name}`,
      `open -k ${name}`,
      `open -x ${name}`,
      'open nosuch',
      `open -n -i native -o driver=${fmt} ${name}`,
      'read -P 2 0 4k',
    ];
    identical(fmt, same(fmt, ['-f', fmt, ...cmds(list)], pair));
  }
});

test('top-level options: bad aio, cache and discard modes, native aio without O_DIRECT', (t) => {
  if (!requireTools(t)) return;
  for (const args of [['-i', 'foo'], ['-i', 'native'], ['-k'], ['-n', '-i', 'native'], ['-i', 'io_uring'], ['-i', 'threads', '--cache', 'writeback'], ['-t', 'foo'], ['-d', 'foo'], ['-d', 'ignore'], ['-C', '-r']]) {
    same('qcow2', ['-f', 'qcow2', ...args, '-c', 'length'], undefined, args.join(' '));
  }
});

test('the vmstate area (-b) is refused on QED and raw as qemu-io refuses it', (t) => {
  if (!requireTools(t)) return;
  for (const fmt of ['qed', 'raw'] as const) {
    same(fmt, ['-f', fmt, ...cmds(['read -b 0 512', 'write -b 0 512', 'write -b 1 512', 'write -bz 0 512', 'write -b -c 0 512'])]);
  }
});

test('sigraise kills as qemu-io does: same output before, same signal', (t) => {
  if (!requireTools(t)) return;
  const pair = imagePair('qcow2');
  const list = cmds(['write -P 1 0 4k', 'sigraise 15', 'write -P 2 0 4k']);
  const q = spawnSync('qemu-io', ['-f', 'qcow2', ...list, pair.name], { ...qDir, encoding: 'utf8' });
  const i = spawnSync(...qimgCommand(['io', '-f', 'qcow2', ...list, pair.name]), { ...iDir, encoding: 'utf8' });
  assert.equal(noTiming(i.stdout), noTiming(q.stdout));
  assert.equal(i.signal, 'SIGTERM');
  assert.equal(i.signal, q.signal);
});

test('commands from stdin are prompted for as qemu-io prompts', (t) => {
  if (!requireTools(t)) return;
  const pair = imagePair('qcow2');
  const input = 'write -P 3 0 4k\nread -P 3 0 4k\nnosuch\n\nlength\n';
  const q = qemuIo(['-f', 'qcow2', pair.name], { ...qDir, input });
  const i = qimg(['io', '-f', 'qcow2', pair.name], { ...iDir, input });
  assert.match(q.stdout, /^qemu-io> wrote/);
  assert.equal(noTiming(i.stdout).replaceAll('qimg> ', 'qemu-io> '), noTiming(q.stdout));
  assert.equal(asQemu(i.stderr, 'qemu-io'), q.stderr);
  assert.equal(i.status, q.status);
  // quit stops reading.
  const qq = qemuIo(['-f', 'qcow2', pair.name], { ...qDir, input: 'quit\nlength\n' });
  const iq = qimg(['io', '-f', 'qcow2', pair.name], { ...iDir, input: 'quit\nlength\n' });
  assert.equal(iq.stdout.replaceAll('qimg> ', 'qemu-io> '), qq.stdout);
});
