/**
 * Raw files as qemu's file driver treats them: discard and `write -z -u`
 * punch holes, `write -z` zeroes in place, preallocation=falloc allocates
 * blocks without writing them. Compared with qemu-io / qemu-img on the same
 * file: the bytes, `qemu-img map` (holes) and the blocks allocated. Without
 * the native call, the same bytes come out by writing zeros.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setFallocateCall } from '../../src/io/fallocate.js';
import { openImageFile } from '../../src/node.js';
import { qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const MiB = 1 << 20;
const blocks = (path: string): number => statSync(path).blocks;
const map = (path: string): string => qemuImg(['map', '--output=json', '-f', 'raw', path]).stdout;

test('raw discard, write -z -u and write -z: the same bytes, holes and allocation as qemu-io', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const ours = join(dir, 'ours.raw');
  const theirs = join(dir, 'theirs.raw');
  const data = randomBytes(8 * MiB);
  writeFileSync(ours, data);
  writeFileSync(theirs, data);
  const cmds = ['discard 1M 1M', 'write -z -u 2M 1M', 'write -z 3M 512k', 'discard 5M 4k', 'write -z -u 6M 12345', 'write -z -u 7M 1M'];
  const args = cmds.flatMap((c) => ['-c', c]);
  assert.equal(qimg(['io', '-f', 'raw', ...args, ours]).status, 0);
  assert.equal(qemuIo(['-f', 'raw', ...args, theirs]).status, 0);
  assert.deepEqual(readFileSync(ours), readFileSync(theirs));
  assert.equal(map(ours), map(theirs));
  assert.ok(blocks(ours) < (8 * MiB) / 512 - 4096, 'holes were punched');
  // Blocks allocated, command by command on a fresh copy (in one session qemu may split
  // unaligned requests differently once it has probed the file, a difference of a block).
  for (const c of cmds) {
    writeFileSync(ours, data);
    writeFileSync(theirs, data);
    assert.equal(qimg(['io', '-f', 'raw', '-c', c, ours]).status, 0);
    assert.equal(qemuIo(['-f', 'raw', '-c', c, theirs]).status, 0);
    assert.equal(blocks(ours), blocks(theirs), c);
    assert.deepEqual(readFileSync(ours), readFileSync(theirs), c);
  }
  // The whole-file size is kept (write -z -u past the end grows it as qemu does).
  assert.equal(statSync(ours).size, statSync(theirs).size);
});

test('raw preallocation=falloc allocates every block without writing, as qemu-img create does', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  for (const mode of ['falloc', 'full', 'off']) {
    const ours = join(dir, `ours-${mode}.raw`);
    const theirs = join(dir, `theirs-${mode}.raw`);
    assert.equal(qimg(['create', '-q', '-f', 'raw', '-o', `preallocation=${mode}`, ours, '16M']).status, 0);
    assert.equal(qemuImg(['create', '-q', '-f', 'raw', '-o', `preallocation=${mode}`, theirs, '16M']).status, 0);
    assert.equal(blocks(ours), blocks(theirs), mode);
    assert.equal(map(ours), map(theirs), mode);
  }
});

test('without fallocate, raw zeroing writes zeros and discard leaves the bytes (nothing is claimed that was not done)', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const path = join(dir, 'plain.raw');
  const data = randomBytes(4 * MiB);
  writeFileSync(path, data);
  setFallocateCall(null);
  try {
    const img = await openImageFile(path, { format: 'raw', writable: true });
    await img.discard(0, MiB);
    await img.writeZeroes(MiB, MiB, { mayUnmap: true });
    await img.close();
  } finally {
    setFallocateCall(undefined);
  }
  const after = readFileSync(path);
  assert.deepEqual(after.subarray(0, MiB), data.subarray(0, MiB), 'discard is advisory: the bytes stay');
  assert.ok(after.subarray(MiB, 2 * MiB).every((b) => b === 0), 'the zeroed range reads as zero');
  assert.deepEqual(after.subarray(2 * MiB), data.subarray(2 * MiB));
});
