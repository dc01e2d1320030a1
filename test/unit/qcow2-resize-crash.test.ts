/**
 * Crash consistency of qcow2 resizes: a grow that must move the L1 table
 * (512-byte clusters: 1 MiB needs one L1 cluster, 8 MiB needs four), writes
 * into the grown area, and a shrink, on a recording storage. The disk is
 * rebuilt as it could be had power failed after every prefix of the storage
 * operations (and with unsynced writes lost); every such disk must open,
 * check without corruption (ours and qemu-img's, sampled), and read back
 * every byte flushed before the crash, up to the size the crashed image has.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage, type Host } from '../../src/block/open.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import '../../src/formats/index.js';
import { RecordingStorage } from '../helpers/recording-storage.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';
import { resizeImage } from '../../src/ops/resize.js';
import type { Qcow2Driver } from '../../src/formats/qcow2/qcow2.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

const hostFor = (storage: Storage): Host => ({
  openStorage: async () => storage,
  resolve: (_p, n) => n,
  identity: async (p) => p,
  codecs: nodeCodecs,
});

const pattern = (length: number, seed: number): Uint8Array => {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (seed + (i >> 6)) & 0xff;
  return b;
};

const MiB = 1 << 20;

test('crash at any point of a qcow2 grow that moves the L1 table, and of a shrink, leaves a consistent image', { skip: !haveQemu, timeout: 300_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-resize-crash-'));
  const file = join(dir, 'base.qcow2');
  try {
    assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', file, '1M']).status, 0);
    const rec = new RecordingStorage(new Uint8Array(readFileSync(file)), 'crash.qcow2');
    const img = await openImage('crash.qcow2', { host: hostFor(rec), writable: true, format: 'qcow2' });
    const model = new Uint8Array(8 * MiB);
    /** Guest contents at each completed flush, and where in the operations it completed. */
    const flushes: Array<{ opsAt: number; model: Uint8Array }> = [{ opsAt: 0, model: model.slice(0, MiB) }];
    /** Ranges that may legitimately differ from the last flush once their operation began. */
    const changes: Array<{ opsAtStart: number; offset: number; length: number }> = [];
    const write = async (offset: number, length: number, seed: number): Promise<void> => {
      changes.push({ opsAtStart: rec.ops.length, offset, length });
      const d = pattern(length, seed);
      await img.write(offset, d);
      model.set(d, offset);
    };
    const flush = async (size: number): Promise<void> => {
      await img.flush();
      flushes.push({ opsAt: rec.ops.length, model: model.slice(0, size) });
    };

    await write(0, 8192, 1);
    await write(1000 * 1024, 24 * 1024, 2);
    await flush(MiB);
    const header = (img.driver as Qcow2Driver).header;
    const l1Before = header.l1TableOffset;
    await resizeImage(img, 8 * MiB);
    assert.equal(img.size, 8 * MiB);
    assert.notEqual(header.l1TableOffset, l1Before, 'the L1 table moved');
    await flush(8 * MiB);
    await write(5 * MiB, 4096, 3);
    await write(7 * MiB, 64 * 1024, 4);
    await flush(8 * MiB);
    // Shrink: everything past the new end may go as soon as the shrink starts.
    changes.push({ opsAtStart: rec.ops.length, offset: 2 * MiB, length: 6 * MiB });
    await resizeImage(img, 2 * MiB, { shrink: true });
    model.fill(0, 2 * MiB);
    await flush(2 * MiB);
    await img.close();
    flushes.push({ opsAt: rec.ops.length, model: model.slice(0, 2 * MiB) });

    const total = rec.ops.length;
    let points = 0;
    const sizes = new Set<number>();
    for (let prefix = 0; prefix <= total; prefix++) {
      const unflushed = rec.unflushedWrites(prefix);
      const losses = [new Set<number>(), new Set(unflushed.filter((_, i) => i % 2 === 0))];
      for (const lost of losses) {
        points++;
        const disk = rec.crashImage(prefix, lost);
        const f = [...flushes].reverse().find((x) => x.opsAt <= prefix)!;
        const after = changes.filter((w) => w.opsAtStart >= f.opsAt);
        const crashed = await openImage('crash.qcow2', { host: hostFor(new MemoryStorage(disk, { writable: false })), format: 'qcow2' });
        sizes.add(crashed.size);
        const n = Math.min(crashed.size, f.model.length);
        const got = new Uint8Array(n);
        await crashed.read(0, got);
        await crashed.close();
        for (let i = 0; i < n; i++) {
          if (got[i] === f.model[i]) continue;
          if (after.some((w) => i >= w.offset && i < w.offset + w.length)) continue;
          assert.fail(`prefix ${prefix}/${total}: byte ${i} lost data flushed at op ${f.opsAt}`);
        }
        const report = await checkQcow2(new MemoryStorage(disk, { writable: false }), { fix: 'none' });
        assert.equal(report.corruptions, 0, `prefix ${prefix}/${total}: ${report.messages.slice(0, 3).join('; ')}`);
        assert.equal(report.failed, undefined);
        if (points % 6 === 1 || prefix === total) {
          const path = join(dir, 'crash.qcow2');
          writeFileSync(path, disk);
          const r = spawnSync('qemu-img', ['check', path], { encoding: 'utf8' });
          assert.ok(r.status === 0 || r.status === 3, `prefix ${prefix}/${total}: qemu-img check exit ${r.status}\n${r.stdout}${r.stderr}`);
        }
      }
    }
    // The crash points cover the old size, the grown one and the shrunk one.
    assert.deepEqual([...sizes].sort((a, b) => a - b), [MiB, 2 * MiB, 8 * MiB]);
    console.log(`# ${points} crash points over ${total} storage operations`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
