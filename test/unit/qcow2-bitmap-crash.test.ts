/**
 * Crash consistency of persistent dirty bitmaps: writes into an image
 * whose bitmaps qemu-img made run on a recording storage; the disk is then
 * rebuilt as a power failure could have left it after every prefix of the
 * storage operations (and with writes since the last sync lost). Every
 * such disk opens, has no corruption, still lists every bitmap, and each
 * bitmap is either flagged in-use or covers every granule whose data
 * differs from before the writes (never silently wrong).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { openImage, type Host } from '../../src/block/open.js';
import type { Image } from '../../src/block/image.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import '../../src/formats/index.js';
import { RecordingStorage } from '../helpers/recording-storage.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

const SIZE = 1 << 20;

function hostFor(storage: Storage): Host {
  return { openStorage: async () => storage, resolve: (_p, n) => n, identity: async (p) => p, codecs: nodeCodecs };
}

interface Snapshot {
  name: string;
  flags: string[];
  enabled: boolean;
  granularity: number;
  /** Dirty granules; undefined when in-use. */
  dirty: boolean[] | undefined;
}

async function bitmaps(img: Image): Promise<Snapshot[]> {
  const set = await img.driver.persistentBitmaps!(false);
  return set.list().map((b) => ({
    name: b.name,
    flags: b.flags,
    enabled: b.enabled,
    granularity: b.granularity,
    dirty: b.bits ? Array.from({ length: Math.ceil(SIZE / b.granularity) }, (_, g) => b.bits!.isSet(g)) : undefined,
  }));
}

async function contents(img: Image): Promise<Uint8Array> {
  const b = new Uint8Array(SIZE);
  await img.read(0, b);
  return b;
}

test('a crash at any point leaves every bitmap, each consistent with the data or flagged in-use', { skip: !haveQemu }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-bmcrash-'));
  const file = join(dir, 'base.qcow2');
  try {
    const q = (cmd: string, ...args: string[]): void => assert.equal(spawnSync(cmd, args).status, 0, args.join(' '));
    q('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', file, String(SIZE));
    q('qemu-io', '-c', 'write -P 5 0 200k', file);
    q('qemu-img', 'bitmap', '--add', '-g', '4096', file, 'b1');
    q('qemu-io', '-c', 'write -P 6 512k 8k', file);
    q('qemu-img', 'bitmap', '--add', '-g', '512', file, 'b2');
    q('qemu-img', 'bitmap', '--add', '--disable', '-g', '65536', file, 'b3');
    const base = new Uint8Array(readFileSync(file));
    const open = (s: Storage, writable: boolean) => openImage('crash.qcow2', { host: hostFor(s), writable, format: 'qcow2' });
    const before = await open(new MemoryStorage(base.slice(), { writable: false }), false);
    const original = await contents(before);
    const originalBitmaps = await bitmaps(before);
    await before.close();

    const rec = new RecordingStorage(base, 'crash.qcow2');
    const img = await open(rec, true);
    const rnd = fc.sample(fc.tuple(fc.nat(SIZE - 1), fc.integer({ min: 1, max: 9000 }), fc.nat(9), fc.nat(255)), { numRuns: 40, seed: 5 });
    for (const [off, len0, kind, seed] of rnd) {
      const len = Math.min(len0, SIZE - off);
      if (kind < 6) await img.write(off, new Uint8Array(len).fill(seed | 1));
      else if (kind < 8) await img.writeZeroes(off, len, { mayUnmap: kind === 7 });
      else if (kind === 8) await img.discard(off, len);
      else await img.flush();
    }
    await img.close();

    const total = rec.ops.length;
    const rng = fc.sample(fc.nat(), { numRuns: 3 * (total + 1), seed: 13 });
    let points = 0;
    let inUseSeen = 0;
    let storedSeen = 0;
    for (let prefix = 0; prefix <= total; prefix++) {
      const unflushed = rec.unflushedWrites(prefix);
      const losses: Set<number>[] = [new Set()];
      for (let k = 0; k < 2 && unflushed.length > 0; k++) {
        const r = rng[(prefix * 3 + k) % rng.length]!;
        losses.push(new Set(unflushed.filter((_, i) => ((r >> (i % 30)) & 1) === 1)));
      }
      for (const lost of losses) {
        points++;
        const disk = rec.crashImage(prefix, lost);
        const at = `prefix ${prefix}/${total}`;
        const report = await checkQcow2(new MemoryStorage(disk, { writable: false }), { fix: 'none' });
        assert.equal(report.corruptions, 0, `${at}: ${report.messages.slice(0, 3).join('; ')}`);
        const crashed = await open(new MemoryStorage(disk, { writable: false }), false);
        const data = await contents(crashed);
        const got = await bitmaps(crashed);
        await crashed.close();
        assert.deepEqual(got.map((b) => b.name), ['b1', 'b2', 'b3'], `${at}: a bitmap was dropped`);
        for (const b of got) {
          if (b.dirty === undefined) {
            assert.ok(b.flags.includes('in-use'), at);
            inUseSeen++;
            continue;
          }
          const was = originalBitmaps.find((x) => x.name === b.name)!;
          // What was dirty stays dirty; a disabled bitmap does not change at all.
          for (let g = 0; g < b.dirty.length; g++) if (was.dirty![g]) assert.ok(b.dirty[g], `${at}: ${b.name} lost granule ${g}`);
          if (!b.enabled) {
            assert.deepEqual(b.dirty, was.dirty, `${at}: disabled ${b.name} changed`);
            continue;
          }
          if (b.dirty.some((d, g) => d !== was.dirty![g])) storedSeen++;
          for (let i = 0; i < SIZE; i++) {
            if (data[i] !== original[i]) {
              const g = Math.floor(i / b.granularity);
              assert.ok(b.dirty[g], `${at}: byte ${i} changed but granule ${g} of ${b.name} is clean`);
              i = (g + 1) * b.granularity - 1;
            }
          }
        }
        if (prefix === total || points % 10 === 1) {
          const path = join(dir, 'crash.qcow2');
          writeFileSync(path, disk);
          const r = spawnSync('qemu-img', ['check', path], { encoding: 'utf8' });
          assert.ok(r.status === 0 || r.status === 3, `${at}: qemu-img check exit ${r.status}\n${r.stdout}${r.stderr}`);
        }
      }
    }
    // The run must have passed through both states, or it proved little.
    assert.ok(inUseSeen > 0 && storedSeen > 0, `in-use seen ${inUseSeen}, stored seen ${storedSeen}`);
    console.log(`# ${points} crash points over ${total} storage operations`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
