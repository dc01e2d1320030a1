/**
 * Crash consistency of commit: an overlay larger than its base, which
 * carries persistent bitmaps, is committed into it (the base grows, takes
 * the top's data and records it in its enabled bitmap), then the top is
 * emptied. Both files run on recording storages. A crash at any prefix of
 * the base's operations (the top untouched, as it is until the base is
 * flushed), with unsynced writes lost, and then at any prefix of the top's
 * (the base complete; a top left dirty is repaired by its next writable
 * open, as qemu repairs it): the chain reads what the top read before, the base
 * has no corruption and keeps its bitmaps (in-use, or dirty wherever the
 * base's own bytes changed).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage, type Host } from '../../src/block/open.js';
import type { Image } from '../../src/block/image.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import '../../src/formats/index.js';
import { RecordingStorage } from '../helpers/recording-storage.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';
import { commitImage } from '../../src/ops/commit.js';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu && process.env.CI) throw new Error('qemu-img is required when CI is set');

const KiB = 1024;
const BASE_SIZE = 512 * KiB;
const TOP_SIZE = 1024 * KiB;

function hostFor(files: Record<string, Storage>): Host {
  return {
    openStorage: async (name) => {
      const s = files[name];
      if (!s) throw new Error(`no file ${name}`);
      return s;
    },
    resolve: (_p, n) => n,
    identity: async (p) => p,
    codecs: nodeCodecs,
  };
}

async function readAll(img: Image): Promise<Uint8Array> {
  const b = new Uint8Array(img.size);
  await img.read(0, b);
  return b;
}

/** The base's own bytes (up to `size`) and its bitmap "on" (undefined when in-use). */
async function baseState(disk: Uint8Array, size: number): Promise<{ data: Uint8Array; dirty: ((byte: number) => boolean) | undefined; names: string[] }> {
  const img = await openImage('base.qcow2', { host: hostFor({ 'base.qcow2': new MemoryStorage(disk, { writable: false }) }), format: 'qcow2' });
  try {
    const data = new Uint8Array(size);
    await img.read(0, data.subarray(0, Math.min(size, img.size)));
    const set = await img.driver.persistentBitmaps!(false);
    const on = set.list().find((b) => b.name === 'on')!;
    const bits = on.bits;
    return { data, dirty: bits ? (i) => bits.isSet(Math.floor(i / on.granularity)) : undefined, names: set.list().map((b) => b.name) };
  } finally {
    await img.close();
  }
}

test('a crash at any point of a commit into a smaller base with bitmaps loses nothing and corrupts nothing', { skip: !haveQemu, timeout: 300_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-commit-crash-'));
  try {
    const q = (cmd: string, ...args: string[]): void => assert.equal(spawnSync(cmd, args, { cwd: dir }).status, 0, `${cmd} ${args.join(' ')}`);
    q('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'base.qcow2', String(BASE_SIZE));
    q('qemu-io', '-c', 'write -P 1 0 256k', 'base.qcow2');
    q('qemu-img', 'bitmap', '--add', '-g', '4096', 'base.qcow2', 'on');
    q('qemu-img', 'bitmap', '--add', '--disable', 'base.qcow2', 'off');
    q('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', String(TOP_SIZE));
    q('qemu-io', '-c', 'write -P 2 100k 40k', '-c', 'write -z 8k 8k', '-c', 'write -P 3 700k 64k', '-c', 'write -c -P 4 900k 4k', 'top.qcow2');
    const baseBytes = new Uint8Array(readFileSync(join(dir, 'base.qcow2')));
    const topBytes = new Uint8Array(readFileSync(join(dir, 'top.qcow2')));

    const openChain = (files: Record<string, Storage>, writable: boolean) => openImage('top.qcow2', { host: hostFor(files), writable, format: 'qcow2' });
    const ro = (b: Uint8Array) => new MemoryStorage(b.slice(), { writable: false });
    const before = await openChain({ 'top.qcow2': ro(topBytes), 'base.qcow2': ro(baseBytes) }, false);
    const expected = await readAll(before);
    await before.close();
    const baseBefore = await baseState(baseBytes, TOP_SIZE);

    const baseRec = new RecordingStorage(baseBytes, 'base.qcow2');
    const topRec = new RecordingStorage(topBytes, 'top.qcow2');
    const base = await openImage('base.qcow2', { host: hostFor({ 'base.qcow2': baseRec }), writable: true, format: 'qcow2', backing: false });
    const top = await openChain({ 'top.qcow2': topRec, 'base.qcow2': baseRec }, true);
    await commitImage(top, { base });
    // The top's chain reads the base through its own handle; the writable base is the one to close.
    await top.close();
    await base.close();
    assert.equal(topRec.ops.filter((o) => o.kind === 'write').length > 0, true, 'the top was emptied');

    const baseAfter = baseRec.bytes();
    let points = 0;
    let inUse = 0;
    const check = async (at: string, topDisk: Uint8Array, baseDisk: Uint8Array, checkBase: boolean): Promise<void> => {
      points++;
      // A top left dirty by an interrupted emptying is repaired by its next writable open, as qemu's is.
      const repaired = new MemoryStorage(topDisk.slice());
      const opened = await openImage('top.qcow2', { host: hostFor({ 'top.qcow2': repaired }), writable: true, format: 'qcow2', backing: false });
      await opened.close();
      topDisk = repaired.bytes();
      const chain = await openChain({ 'top.qcow2': ro(topDisk), 'base.qcow2': ro(baseDisk) }, false);
      const got = await readAll(chain);
      await chain.close();
      assert.equal(got.length, expected.length, `${at}: size`);
      const bad = got.findIndex((v, i) => v !== expected[i]);
      assert.equal(bad, -1, `${at}: the chain reads differently at byte ${bad}`);
      for (const [name, disk] of [['top', topDisk], ['base', baseDisk]] as const) {
        const report = await checkQcow2(new MemoryStorage(disk, { writable: false }), { fix: 'none' });
        assert.equal(report.corruptions, 0, `${at}: ${name}: ${report.messages.slice(0, 3).join('; ')}`);
      }
      if (!checkBase) return;
      const st = await baseState(baseDisk, TOP_SIZE);
      assert.deepEqual(st.names, ['on', 'off'], `${at}: a bitmap was dropped`);
      if (st.dirty === undefined) {
        inUse++;
        return;
      }
      for (let i = 0; i < TOP_SIZE; i++) {
        if (st.data[i] !== baseBefore.data[i]) {
          assert.ok(st.dirty(i), `${at}: base byte ${i} changed but its granule of 'on' is clean`);
          i += 4095 - (i % 4096);
        }
      }
      if (points % 8 === 1) {
        const path = join(dir, 'crash.qcow2');
        writeFileSync(path, baseDisk);
        const r = spawnSync('qemu-img', ['check', path], { encoding: 'utf8' });
        assert.ok(r.status === 0 || r.status === 3, `${at}: qemu-img check exit ${r.status}\n${r.stdout}${r.stderr}`);
      }
    };

    // The base's operations, the top as it was.
    const baseTotal = baseRec.ops.length;
    for (let prefix = 0; prefix <= baseTotal; prefix++) {
      const unflushed = baseRec.unflushedWrites(prefix);
      for (const lost of [new Set<number>(), new Set(unflushed.filter((_, i) => i % 2 === 1))]) {
        await check(`base prefix ${prefix}/${baseTotal}`, topBytes, baseRec.crashImage(prefix, lost), true);
      }
    }
    // The top's operations (emptying it), the base complete.
    const topTotal = topRec.ops.length;
    for (let prefix = 0; prefix <= topTotal; prefix++) {
      const unflushed = topRec.unflushedWrites(prefix);
      for (const lost of [new Set<number>(), new Set(unflushed.filter((_, i) => i % 2 === 0))]) {
        await check(`top prefix ${prefix}/${topTotal}`, topRec.crashImage(prefix, lost), baseAfter, false);
      }
    }
    assert.ok(inUse > 0, 'some crash points leave the bitmaps in use');
    assert.ok(points > 40, `only ${points} crash points`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
