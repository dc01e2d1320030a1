/**
 * Crash consistency of emptying a qcow2 v3 image after a commit (the
 * in-place reset): rebuilt as the disk could be after every prefix of the
 * storage operations (and with unflushed writes lost), the image opens
 * writable (a dirty one is repaired on open), has no corruption after that,
 * and reads as before: its own data and the committed base agree, so
 * whichever state it is in, the guest sees the same bytes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createImage } from '../../src/block/create.js';
import { openImage, type Host } from '../../src/block/open.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import { commitImage } from '../../src/ops/commit.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';
import '../../src/formats/index.js';
import { RecordingStorage } from '../helpers/recording-storage.js';

const SIZE = 1 << 20;

function hostOf(files: Record<string, Storage>): Host {
  return {
    openStorage: async (path) => {
      const s = files[path];
      if (!s) throw new Error(`no file ${path}`);
      return s;
    },
    resolve: (_p, n) => n,
    identity: async (p) => p,
    codecs: nodeCodecs,
  };
}

test('an interrupted emptying of a qcow2 v3 image is repaired on open and reads as before', async () => {
  const base = new MemoryStorage();
  await createImage(base, { format: 'qcow2', size: SIZE, clusterSize: 4096 } as never);
  const topBytes = new MemoryStorage();
  await createImage(topBytes, { format: 'qcow2', size: SIZE, clusterSize: 4096, backingFile: 'base', backingFormat: 'qcow2' } as never);
  {
    const b = await openImage('base', { host: hostOf({ base }), writable: true, format: 'qcow2' });
    await b.write(0, new Uint8Array(300 * 1024).fill(1));
    await b.close();
    const t = await openImage('top', { host: hostOf({ top: topBytes, base }), writable: true, format: 'qcow2' });
    await t.write(100 * 1024, new Uint8Array(400 * 1024).fill(2));
    await t.writeZeroes(600 * 1024, 64 * 1024);
    await t.close();
  }
  // Commit without emptying; then empty the top on a recording storage.
  {
    const t = await openImage('top', { host: hostOf({ top: topBytes, base }), writable: true, format: 'qcow2' });
    const b = await openImage('base', { host: hostOf({ base }), writable: true, format: 'qcow2', backing: false });
    await commitImage(t, { base: b, drop: true });
    await t.close();
    await b.close();
  }
  const ro = (bytes: Uint8Array) => new MemoryStorage(bytes, { writable: false });
  const read = async (top: Storage) => {
    const img = await openImage('top', { host: hostOf({ top, base: ro(base.bytes()) }), format: 'qcow2' });
    const b = new Uint8Array(SIZE);
    await img.read(0, b);
    await img.close();
    return b;
  };
  const before = await read(ro(topBytes.bytes()));
  const rec = new RecordingStorage(topBytes.bytes(), 'top');
  const top = await openImage('top', { host: hostOf({ top: rec, base: ro(base.bytes()) }), writable: true, format: 'qcow2' });
  await top.driver.makeEmpty!();
  await top.close();
  assert.ok(rec.bytes().length < topBytes.bytes().length, 'the file was cut short');

  const total = rec.ops.length;
  for (let prefix = 0; prefix <= total; prefix++) {
    const unflushed = rec.unflushedWrites(prefix);
    for (const lost of [new Set<number>(), new Set(unflushed)]) {
      const disk = new MemoryStorage(rec.crashImage(prefix, lost));
      // A writable open repairs an image left dirty.
      const img = await openImage('top', { host: hostOf({ top: disk, base: ro(base.bytes()) }), writable: true, format: 'qcow2' });
      await img.close();
      const report = await checkQcow2(ro(disk.bytes()), { fix: 'none' });
      assert.equal(report.corruptions, 0, `prefix ${prefix}/${total}: ${report.messages.slice(0, 3).join('; ')}`);
      assert.ok(Buffer.from(await read(ro(disk.bytes()))).equals(Buffer.from(before)), `prefix ${prefix}/${total}: guest content changed`);
    }
  }
  // Emptied for good at the end: nothing of the top's own is left.
  const last = await openImage('top', { host: hostOf({ top: ro(rec.bytes()), base: ro(base.bytes()) }), format: 'qcow2' });
  for (let off = 0; off < SIZE; ) {
    const st = await last.layerStatus(off, SIZE - off);
    assert.equal(st.allocated, false, `allocated at ${off}`);
    off += st.length;
  }
  await last.close();
});
