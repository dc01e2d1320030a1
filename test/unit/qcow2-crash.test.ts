/**
 * Crash consistency: a workload runs on a recording storage; then the disk
 * is rebuilt as it could be had power failed after every prefix of the
 * storage operations, and with random subsets of the writes since the last
 * sync lost. Every such disk must open, `qemu-img check` must find no
 * corruption (leaks are allowed), and every byte acknowledged before a
 * completed flush must read back as it was.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { openImage, type Host } from '../../src/block/open.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import '../../src/formats/index.js';
import { RecordingStorage } from '../helpers/recording-storage.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

function hostFor(storage: Storage): Host {
  return {
    openStorage: async () => storage,
    resolve: (_p, n) => n,
    identity: async (p) => p,
    codecs: nodeCodecs,
  };
}

interface Flushed {
  /** Storage operations recorded when the guest flush completed. */
  opsAt: number;
  /** Guest contents at that moment. */
  model: Uint8Array;
  /** Storage op count when each later guest write began, with its range. */
}

interface GuestWrite {
  opsAtStart: number;
  offset: number;
  length: number;
}

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (seed + (i >> 6)) & 0xff;
  return b;
}

const variants = [
  { name: '4K clusters', opts: 'cluster_size=4096', size: 1 << 20, cluster: 4096, bulk: 0, lossSets: 4 },
  { name: '512B clusters, 64-bit refcounts (refcount table growth)', opts: 'cluster_size=512,refcount_bits=64', size: 3 << 20, cluster: 512, bulk: 2200 << 10, lossSets: 1 },
  { name: 'lazy refcounts, extended L2', opts: 'cluster_size=32768,extended_l2=on,lazy_refcounts=on', size: 2 << 20, cluster: 32768, bulk: 0, lossSets: 4 },
];

for (const v of variants) {
  test(`crash at any point leaves a consistent qcow2: ${v.name}`, { skip: !haveQemu }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qimg-crash-'));
    const file = join(dir, 'base.qcow2');
    try {
      assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', v.opts, file, String(v.size)]).status, 0);
      const base = new Uint8Array(readFileSync(file));
      const rec = new RecordingStorage(base, 'crash.qcow2');
      const img = await openImage('crash.qcow2', { host: hostFor(rec), writable: true, format: 'qcow2' });
      const model = new Uint8Array(v.size);
      const flushes: Flushed[] = [{ opsAt: 0, model: model.slice() }];
      const writes: GuestWrite[] = [];
      if (v.bulk > 0) {
        // Enough data that the refcount table must grow (one table cluster covers 2 MiB here).
        const d = pattern(v.bulk, 99);
        writes.push({ opsAtStart: rec.ops.length, offset: 0, length: v.bulk });
        await img.write(0, d);
        model.set(d, 0);
      }
      const rnd = fc.sample(fc.tuple(fc.nat(v.size - 1), fc.integer({ min: 1, max: v.cluster * 2 }), fc.nat(9), fc.nat(255)), { numRuns: 90, seed: 7 });
      for (const [off, len0, kind, seed] of rnd) {
        const len = Math.min(len0, v.size - off);
        writes.push({ opsAtStart: rec.ops.length, offset: off, length: len });
        if (kind < 6) {
          const d = pattern(len, seed);
          await img.write(off, d);
          model.set(d, off);
        } else if (kind < 8) {
          await img.writeZeroes(off, len, { mayUnmap: kind === 7 });
          model.fill(0, off, off + len);
        } else {
          await img.flush();
          flushes.push({ opsAt: rec.ops.length, model: model.slice() });
        }
      }
      await img.close();
      flushes.push({ opsAt: rec.ops.length, model: model.slice() });

      let points = 0;
      const total = rec.ops.length;
      const rng = fc.sample(fc.nat(), { numRuns: 5 * (total + 1), seed: 11 });
      for (let prefix = 0; prefix <= total; prefix++) {
        const unflushed = rec.unflushedWrites(prefix);
        const losses: Set<number>[] = [new Set()];
        for (let k = 0; k < v.lossSets && unflushed.length > 0; k++) {
          const r = rng[(prefix * 5 + k) % rng.length]!;
          losses.push(new Set(unflushed.filter((_, i) => ((r >> (i % 30)) & 1) === 1)));
        }
        for (const lost of losses) {
          points++;
          const disk = rec.crashImage(prefix, lost);
          // The last guest flush that had completed by this point.
          const f = [...flushes].reverse().find((x) => x.opsAt <= prefix)!;
          const after = writes.filter((w) => w.opsAtStart >= f.opsAt);
          const crashed = await openImage('crash.qcow2', { host: hostFor(new MemoryStorage(disk, { writable: false })), format: 'qcow2' });
          const got = new Uint8Array(v.size);
          await crashed.read(0, got);
          await crashed.close();
          for (let i = 0; i < v.size; i++) {
            if (got[i] === f.model[i]) continue;
            if (after.some((w) => i >= w.offset && i < w.offset + w.length)) continue;
            assert.fail(`prefix ${prefix}/${total}: byte ${i} lost data flushed at op ${f.opsAt}`);
          }
          // Our check on every crash point: no corruption (leaks are allowed).
          const report = await checkQcow2(new MemoryStorage(disk, { writable: false }), { fix: 'none' });
          assert.equal(report.corruptions, 0, `prefix ${prefix}/${total}: ${report.messages.slice(0, 3).join('; ')}`);
          assert.equal(report.failed, undefined);
          // qemu-img check agrees: no corruption; leaks (exit 3) are allowed. Sampled: it is the slow part.
          if (points % 4 === 1 || prefix === total) {
            const path = join(dir, 'crash.qcow2');
            writeFileSync(path, disk);
            const r = spawnSync('qemu-img', ['check', path], { encoding: 'utf8' });
            assert.ok(r.status === 0 || r.status === 3, `prefix ${prefix}/${total}: qemu-img check exit ${r.status}\n${r.stdout}${r.stderr}`);
          }
        }
      }
      assert.ok(points >= 300, `only ${points} crash points`);
      console.log(`# ${v.name}: ${points} crash points over ${total} storage operations`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
