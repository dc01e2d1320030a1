/**
 * Crash consistency of internal snapshot operations: create, delete and
 * apply run on a recording storage; the disk is then rebuilt as it could be
 * had power failed after every prefix of the storage operations (and with
 * random subsets of the unsynced writes lost). Every such disk must open;
 * the active image must read as before the operation (or, for apply, as
 * before or as the snapshot); every snapshot in the table must read as it
 * was made; and the check may find leaks, and COPIED flags that are clear
 * where they could be set (a cluster copied rather than written in place),
 * but nothing else: never a refcount below the references, never a shared
 * cluster marked writable in place.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { openImage, type Host } from '../../src/block/open.js';
import { applySnapshotOn, createSnapshotOn, deleteSnapshotOn } from '../../src/block/snapshot.js';
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

async function read(disk: Uint8Array, internalSnapshot?: string): Promise<Uint8Array> {
  const img = await openImage('crash.qcow2', { host: hostFor(new MemoryStorage(disk, { writable: false })), format: 'qcow2', internalSnapshot });
  const got = new Uint8Array(img.size);
  await img.read(0, got);
  await img.close();
  return got;
}

const COPIED = 1n << 63n;

/** Check messages that are not leaks nor a COPIED flag clear where it could be set. */
function unsafeFindings(messages: readonly string[]): string[] {
  return messages.filter((m) => {
    if (/Leaked cluster/.test(m)) return false;
    const copied = /OFLAG_COPIED .*(?:l2_entry|l1_entry)=([0-9a-f]+) refcount=(\d+)/.exec(m);
    if (copied) return (BigInt(`0x${copied[1]}`) & COPIED) !== 0n;
    return true;
  });
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
}

test('snapshot create, delete and apply: a crash at any point loses and corrupts nothing', { skip: !haveQemu }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-sncrash-'));
  try {
    const file = join(dir, 'base.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', file, String(SIZE)]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', '-c', 'write -c -P 0x22 512k 16k', '-c', 'write -P 0x33 900k 8k', file]);
    run('qemu-img', ['snapshot', '-c', 'q1', file]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 16k 16k', '-c', 'write -z 900k 4k', '-c', 'write -P 0x55 200k 4k', file]);
    const base = new Uint8Array(readFileSync(file));
    const q1 = await read(base, 'q1');
    const active = await read(base);
    assert.notDeepEqual(q1, active);

    const rec = new RecordingStorage(base, 'crash.qcow2');
    // Phases: [first op, last op) of each operation, what the active image may read as, and the snapshots each prefix may hold.
    const phases: Array<{ name: string; from: number; to: number; actives: Uint8Array[] }> = [];
    let from = rec.ops.length;
    await createSnapshotOn(rec, 'qcow2', 'mine');
    phases.push({ name: 'create', from, to: rec.ops.length, actives: [active] });
    from = rec.ops.length;
    await deleteSnapshotOn(rec, 'qcow2', 'q1');
    phases.push({ name: 'delete', from, to: rec.ops.length, actives: [active] });
    // Make the active image differ from "mine", then apply "mine" back.
    const img = await openImage('crash.qcow2', { host: hostFor(rec), format: 'qcow2', writable: true });
    await img.write(0, new Uint8Array(8192).fill(0x66));
    await img.close();
    const changed = await read(rec.bytes());
    from = rec.ops.length;
    await applySnapshotOn(rec, 'qcow2', 'mine');
    phases.push({ name: 'apply', from, to: rec.ops.length, actives: [changed, active] });
    assert.deepEqual(await read(rec.bytes()), active, 'apply restored the snapshot');

    const expected = new Map([
      ['q1', q1],
      ['mine', active],
    ]);
    const rng = fc.sample(fc.nat(), { numRuns: 4096, seed: 5 });
    let points = 0;
    for (const phase of phases) {
      for (let prefix = phase.from; prefix <= phase.to; prefix++) {
        const unflushed = rec.unflushedWrites(prefix);
        const losses: Set<number>[] = [new Set()];
        for (let k = 0; k < 3 && unflushed.length > 0; k++) {
          const r = rng[(prefix * 3 + k) % rng.length]!;
          losses.push(new Set(unflushed.filter((_, i) => ((r >> (i % 30)) & 1) === 1)));
        }
        for (const lost of losses) {
          points++;
          const where = `${phase.name}: prefix ${prefix - phase.from}/${phase.to - phase.from}`;
          const disk = rec.crashImage(prefix, lost);
          const now = await read(disk);
          assert.ok(
            phase.actives.some((a) => Buffer.compare(Buffer.from(a), Buffer.from(now)) === 0),
            `${where}: the active image reads as neither the state before nor after`,
          );
          const report = await checkQcow2(new MemoryStorage(disk, { writable: false }), { fix: 'none' });
          assert.equal(report.failed, undefined, where);
          assert.deepEqual(unsafeFindings(report.messages), [], where);
          const img2 = await openImage('crash.qcow2', { host: hostFor(new MemoryStorage(disk, { writable: false })), format: 'qcow2' });
          const names = ((await img2.info()).snapshots ?? []).map((s) => s.name);
          await img2.close();
          for (const n of names) assert.deepEqual(await read(disk, n), expected.get(n), `${where}: snapshot ${n}`);
        }
      }
    }
    assert.ok(points >= 60, `only ${points} crash points`);
    console.log(`# ${points} crash points over ${phases.map((p) => `${p.name} ${p.to - p.from}`).join(', ')} storage operations`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
