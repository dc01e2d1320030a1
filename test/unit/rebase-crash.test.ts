/**
 * Crash consistency of a safe rebase: the copy into the top image is
 * recorded, and the disk rebuilt as it could be had power failed after
 * every prefix of the storage operations (and with writes since the last
 * flush lost). Every such top image has no corruption and reads exactly as
 * before the rebase, whichever backing file its header names by then: the
 * header is rewritten only after the copied data is on disk.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage, type Host } from '../../src/block/open.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import { rebaseImage } from '../../src/ops/rebase.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';
import '../../src/formats/index.js';
import { RecordingStorage } from '../helpers/recording-storage.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

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

const SIZE = 1 << 20;

test('an interrupted safe rebase of a qcow2 reads as before at every crash point', { skip: !haveQemu }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-rebase-crash-'));
  try {
    const sh = (script: string) => assert.equal(spawnSync('bash', ['-euc', script], { cwd: dir }).status, 0, script);
    sh(`qemu-img create -q -f qcow2 -o cluster_size=4096 old.qcow2 1M
        qemu-io -c 'write -P 1 0 300k' -c 'write -P 2 600k 200k' old.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -o cluster_size=4096 new.qcow2 1M
        qemu-io -c 'write -P 3 100k 300k' -c 'write -P 2 600k 100k' new.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -o cluster_size=4096 -b old.qcow2 -F qcow2 top.qcow2
        qemu-io -c 'write -P 9 50k 20k' -c 'write -z 900k 8k' -c 'write -c -P 7 960k 4k' top.qcow2 >/dev/null`);
    const file = (n: string) => new Uint8Array(readFileSync(join(dir, n)));
    const old = file('old.qcow2');
    const neu = file('new.qcow2');
    const rec = new RecordingStorage(file('top.qcow2'), 'top.qcow2');
    const ro = (b: Uint8Array) => new MemoryStorage(b, { writable: false });

    const top = await openImage('top.qcow2', { host: hostOf({ 'top.qcow2': rec, 'old.qcow2': ro(old) }), writable: true, format: 'qcow2' });
    const before = new Uint8Array(SIZE);
    await top.read(0, before);
    const newBacking = await openImage('new.qcow2', { host: hostOf({ 'new.qcow2': ro(neu) }), format: 'qcow2' });
    await rebaseImage(top, newBacking, { backingFile: 'new.qcow2', backingFormat: 'qcow2' });
    await top.close();
    await newBacking.close();

    const total = rec.ops.length;
    let points = 0;
    const named = new Set<string>();
    for (let prefix = 0; prefix <= total; prefix++) {
      const unflushed = rec.unflushedWrites(prefix);
      // Nothing lost, everything unflushed lost, and every other unflushed write lost.
      const losses = [new Set<number>(), new Set(unflushed), new Set(unflushed.filter((_, i) => i % 2 === 0))];
      for (const lost of losses) {
        points++;
        const disk = rec.crashImage(prefix, lost);
        const img = await openImage('top.qcow2', {
          host: hostOf({ 'top.qcow2': ro(disk), 'old.qcow2': ro(old), 'new.qcow2': ro(neu) }),
          format: 'qcow2',
        });
        named.add(img.backing!.filename);
        const got = new Uint8Array(SIZE);
        await img.read(0, got);
        await img.close();
        assert.ok(Buffer.from(got).equals(Buffer.from(before)), `prefix ${prefix}/${total}: guest content changed`);
        const report = await checkQcow2(ro(disk), { fix: 'none' });
        assert.equal(report.corruptions, 0, `prefix ${prefix}/${total}: ${report.messages.slice(0, 3).join('; ')}`);
      }
    }
    // Both views were seen: the old backing file before the header, the new one after.
    assert.deepEqual([...named].sort(), ['new.qcow2', 'old.qcow2']);
    assert.ok(total > 10, `only ${total} storage operations`);
    console.log(`# rebase: ${points} crash points over ${total} storage operations`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
