/**
 * Crash consistency of qcow2 amendments that rewrite metadata: a new
 * refcount width (narrower and wider) and a downgrade to compat=0.10, run
 * on a recording storage over an image qemu-img made (512-byte clusters, so
 * many refcount blocks; data, compressed and zero clusters, a snapshot).
 * The disk is rebuilt as it could be had power failed after every prefix of
 * the storage operations (and with half the unsynced writes lost); every
 * such disk must open, check with at most leaked clusters (ours, and
 * qemu-img's on a sample), and read the same guest data, in the active
 * image and in the snapshot.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage, type Host } from '../../src/block/open.js';
import { OptionBag } from '../../src/block/options.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import '../../src/formats/index.js';
import { RecordingStorage } from '../helpers/recording-storage.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';
import { amendQcow2, parseQcow2Amendments } from '../../src/formats/qcow2/amend.js';
import { readHeader } from '../../src/formats/qcow2/header.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

const hostFor = (storage: Storage): Host => ({ openStorage: async () => storage, resolve: (_p, n) => n, identity: async (p) => p, codecs: nodeCodecs });

async function read(disk: Uint8Array, internalSnapshot?: string): Promise<Uint8Array> {
  const img = await openImage('crash.qcow2', { host: hostFor(new MemoryStorage(disk, { writable: false })), format: 'qcow2', internalSnapshot });
  const got = new Uint8Array(img.size);
  await img.read(0, got);
  await img.close();
  return got;
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** An image with a little of everything, and a snapshot whose clusters the active image shares. */
function fixture(dir: string, zeroOverShared: boolean): Uint8Array {
  const file = join(dir, 'base.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', file, '2M']);
  run('qemu-io', ['-c', 'write -P 1 0 40k', '-c', 'write -c -P 2 300k 8k', '-c', 'write -P 3 700k 20k', '-c', 'write -z 720k 4k', '-c', 'write -P 5 1500k 300k', file]);
  run('qemu-img', ['snapshot', '-c', 's1', file]);
  run('qemu-io', ['-c', 'write -P 4 8k 4k', '-c', 'write -z 1000k 8k', file]);
  // A zero write over data the snapshot shares keeps the cluster (zero flag, refcount 2).
  if (zeroOverShared) run('qemu-io', ['-c', 'write -z 16k 2k', file]);
  return new Uint8Array(readFileSync(file));
}

async function crashEverywhere(dir: string, base: Uint8Array, options: string, expectOrder: number, expectVersion: number): Promise<void> {
  const active = await read(base);
  const snapshot = await read(base, 's1');
  const rec = new RecordingStorage(base, 'crash.qcow2');
  await amendQcow2(rec, parseQcow2Amendments(OptionBag.parse(options)));
  const done = await readHeader(new MemoryStorage(rec.bytes(), { writable: false }));
  assert.equal(done.refcountOrder, expectOrder, options);
  assert.equal(done.version, expectVersion, options);
  const total = rec.ops.length;
  assert.ok(total > 5, `${options}: ${total} storage operations recorded`);
  let points = 0;
  const seen = new Set<string>();
  for (let prefix = 0; prefix <= total; prefix++) {
    const unflushed = rec.unflushedWrites(prefix);
    for (const lost of [new Set<number>(), new Set(unflushed.filter((_, i) => i % 2 === 0))]) {
      points++;
      const disk = rec.crashImage(prefix, lost);
      const h = await readHeader(new MemoryStorage(disk, { writable: false }));
      seen.add(`${h.version}/${h.refcountOrder}`);
      const what = `${options}: prefix ${prefix}/${total}, ${lost.size} lost`;
      assert.ok((await read(disk)).every((b, i) => b === active[i]), `${what}: active image`);
      assert.ok((await read(disk, 's1')).every((b, i) => b === snapshot[i]), `${what}: snapshot`);
      const report = await checkQcow2(new MemoryStorage(disk, { writable: false }), { fix: 'none' });
      assert.equal(report.corruptions, 0, `${what}: ${report.messages.slice(0, 3).join('; ')}`);
      assert.equal(report.checkErrors, 0, what);
      assert.equal(report.failed, undefined, what);
      if (points % 16 === 1 || prefix === total) {
        const path = join(dir, 'crash.qcow2');
        writeFileSync(path, disk);
        const r = spawnSync('qemu-img', ['check', path], { encoding: 'utf8' });
        assert.ok(r.status === 0 || r.status === 3, `${what}: qemu-img check exit ${r.status}\n${r.stdout}${r.stderr}`);
      }
    }
  }
  // The crash points cover the image before and after the switch.
  assert.ok(seen.size >= 2, `${options}: ${[...seen].join(', ')}`);
  console.log(`# ${options}: ${points} crash points over ${total} storage operations`);
}

test('crash at any point of a refcount width change or a downgrade leaves a valid image with the same data', { skip: !haveQemu, timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-amend-crash-'));
  try {
    const base = fixture(dir, true);
    await crashEverywhere(dir, base, 'refcount_bits=8', 3, 3);
    await crashEverywhere(dir, base, 'refcount_bits=64', 6, 3);
    await crashEverywhere(dir, base, 'refcount_bits=32,lazy_refcounts=on', 5, 3);
    // Not over a shared zero cluster: a downgrade zeroes that cluster, the snapshot's data with it, as qemu's does.
    await crashEverywhere(dir, fixture(dir, false), 'compat=0.10', 4, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
