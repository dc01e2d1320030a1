/**
 * The corrupt bit: a write that would land on metadata (tables pointing
 * where they must not, as iotest 060 builds them) is refused, the image is
 * marked corrupt exactly as qemu marks it, and read-write opens are refused
 * until `check -r all` mends it. Read-only opens still work.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, openSync, rmSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageFile } from '../../src/node.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

function poke(path: string, offset: number, bytes: number[]): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, Uint8Array.from(bytes), 0, bytes.length, offset);
  closeSync(fd);
}

const cases = [
  // The data cluster of guest offset 0 pointed at the L1 table (0x30000), the L2 table (0x40000), the refcount block (0x20000).
  { name: 'active L1 table', target: [0x80, 0, 0, 0, 0, 0x03, 0, 0] },
  { name: 'active L2 table', target: [0x80, 0, 0, 0, 0, 0x04, 0, 0] },
  { name: 'refcount block', target: [0x80, 0, 0, 0, 0, 0x02, 0, 0] },
  { name: 'refcount table', target: [0x80, 0, 0, 0, 0, 0x01, 0, 0] },
];

for (const c of cases) {
  test(`a write onto the ${c.name} marks the image corrupt, as qemu-io does`, { skip: !haveQemu }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qimg-corrupt-'));
    try {
      const ours = join(dir, 'ours.qcow2');
      const theirs = join(dir, 'theirs.qcow2');
      assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', ours, '64M']).status, 0);
      assert.equal(spawnSync('qemu-io', ['-c', 'write -P 1 0 64k', ours]).status, 0);
      poke(ours, 0x40000, c.target);
      copyFileSync(ours, theirs);
      const q = spawnSync('qemu-io', ['-c', 'write -P 2 0 512', theirs], { encoding: 'utf8' });
      const qemuLine = q.stderr.split('\n').find((l) => l.startsWith('qcow2: Marking image as corrupt'))!;
      assert.ok(qemuLine, q.stderr);

      const img = await openImageFile(ours, { writable: true });
      await assert.rejects(img.write(0, new Uint8Array(512).fill(2)), (e: Error) => `qcow2: ${e.message}` === qemuLine);
      // Further writes fail too, and the data was not written over the metadata.
      await assert.rejects(img.write(0, new Uint8Array(512)));
      await img.close().catch(() => {});
      const info = (p: string) => JSON.parse(spawnSync('qemu-img', ['info', '--output=json', p], { encoding: 'utf8' }).stdout);
      assert.equal(info(ours)['format-specific'].data.corrupt, true);
      assert.deepEqual(info(ours)['format-specific'], info(theirs)['format-specific']);
      await assert.rejects(openImageFile(ours, { writable: true }), /Image is corrupt; cannot be opened read\/write/);
      const ro = await openImageFile(ours);
      await ro.close();
      // qemu's own check agrees the two images are in the same state.
      const a = spawnSync('qemu-img', ['check', '--output=json', ours], { encoding: 'utf8' });
      const b = spawnSync('qemu-img', ['check', '--output=json', theirs], { encoding: 'utf8' });
      assert.equal(a.status, b.status);
      const strip = (s: string) => ({ ...JSON.parse(s), filename: undefined });
      assert.deepEqual(strip(a.stdout), strip(b.stdout));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
