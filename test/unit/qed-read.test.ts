/**
 * QED images made by qemu-img/qemu-io read byte-identically through qimg
 * (against `qemu-img convert -O raw`), and block status equals
 * `qemu-img map --output=json`, for several geometries and backing chains.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageFile } from '../../src/node.js';
import { extents, type Image } from '../../src/block/image.js';
import { isImageError } from '../../src/errors.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'qimg-qed-read-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function needQemu(t: { skip(msg?: string): void }): boolean {
  if (haveQemu) return true;
  if (process.env.CI) assert.fail('qemu-img and qemu-io are required when CI is set');
  t.skip('qemu-img not installed');
  return false;
}

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}
const qemuImg = (...args: string[]): string => run('qemu-img', args);
function qemuIo(path: string, fmt: string, cmds: string[]): void {
  run('qemu-io', ['-f', fmt, ...cmds.flatMap((c) => ['-c', c]), path]);
}

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

function qemuMap(path: string): MapEntry[] {
  const raw = JSON.parse(qemuImg('map', '--output=json', path)) as MapEntry[];
  return raw.map(({ start, length, depth, present, zero, data, offset }) => entry(start, length, depth, present, zero, data, offset));
}

function entry(start: number, length: number, depth: number, present: boolean, zero: boolean, data: boolean, offset?: number): MapEntry {
  const e: MapEntry = { start, length, depth, present, zero, data };
  if (offset !== undefined) e.offset = offset;
  return e;
}

/** extents() merged the way qemu-img map merges its entries. */
async function ourMap(img: Image): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  for await (const x of extents(img)) {
    const e = entry(x.offset, x.length, x.depth, x.present, x.zero, x.data, x.hostOffset);
    const last = out[out.length - 1];
    if (
      last &&
      last.start + last.length === e.start &&
      last.depth === e.depth &&
      last.present === e.present &&
      last.zero === e.zero &&
      last.data === e.data &&
      (last.offset === undefined) === (e.offset === undefined) &&
      (last.offset === undefined || last.offset + last.length === e.offset)
    ) {
      last.length += e.length;
    } else {
      out.push(e);
    }
  }
  return out;
}

/**
 * Compare guest bytes with qemu-img convert's raw output: every data extent
 * whole, and the first and last 64 KiB of every other one (or everything,
 * for small images).
 */
async function compareReads(img: Image, path: string, map: MapEntry[]): Promise<void> {
  const rawPath = `${path}.converted.raw`;
  qemuImg('convert', '-O', 'raw', path, rawPath);
  const fh = await openFile(rawPath, 'r');
  try {
    const ranges: Array<[number, number]> = [];
    if (img.size <= 64 * MiB) ranges.push([0, img.size]);
    else {
      for (const e of map) {
        if (e.data) ranges.push([e.start, e.length]);
        else {
          const n = Math.min(e.length, 64 * KiB);
          ranges.push([e.start, n], [e.start + e.length - n, n]);
        }
      }
    }
    for (const [start, length] of ranges) {
      for (let pos = start; pos < start + length; pos += 4 * MiB) {
        const n = Math.min(4 * MiB, start + length - pos);
        const ours = new Uint8Array(n);
        const theirs = new Uint8Array(n);
        await img.read(pos, ours);
        const { bytesRead } = await fh.read(theirs, 0, n, pos);
        theirs.fill(0, bytesRead);
        if (Buffer.compare(ours, theirs) !== 0) {
          let i = 0;
          while (ours[i] === theirs[i]) i++;
          assert.fail(`${path}: bytes differ at guest offset ${pos + i}`);
        }
      }
    }
  } finally {
    await fh.close();
    rmSync(rawPath, { force: true });
  }
}

/** Info fields qemu-img 7.2 prints for a single image (no --backing-chain). */
function compareInfo(ours: Record<string, unknown>, path: string): void {
  const theirs = JSON.parse(qemuImg('info', '--output=json', path)) as Record<string, unknown>;
  delete theirs['actual-size'];
  const mine = { ...ours };
  delete mine['actual-size'];
  assert.deepEqual(mine, theirs);
}

async function checkImage(path: string): Promise<Image> {
  const img = await openImageFile(path);
  const map = qemuMap(path);
  assert.deepEqual(await ourMap(img), map, `${path}: block status`);
  await compareReads(img, path, map);
  compareInfo({ ...(await img.info()) }, path);
  return img;
}

/** Writes that exercise runs, partial clusters, zero clusters and L1 boundaries. */
function workload(cs: number, coverage: number, size: number): string[] {
  const cmds = [
    `write -P 1 0 ${3 * cs}`,
    `write -P 2 ${5 * cs + 512} 2560`,
    `write -z ${8 * cs} ${2 * cs}`,
    `write -P 3 ${12 * cs} ${cs}`,
    `write -z ${12 * cs} ${cs}`,
    `write -P 4 ${14 * cs + cs / 2} ${cs}`,
    `write -P 5 ${size - 2 * cs} ${2 * cs}`,
    `write -P 6 ${Math.floor(size / 2 / cs) * cs + 4096} 4096`,
  ];
  if (coverage + 8 * cs <= size - 2 * cs) {
    cmds.push(`write -P 7 ${coverage - cs} ${2 * cs}`, `write -z ${coverage + 4 * cs} ${cs}`);
  }
  return cmds;
}

const geometries: Array<{ cs: number; ts: number; size: number }> = [
  { cs: 4 * KiB, ts: 2, size: 24 * MiB },
  { cs: 4 * KiB, ts: 4, size: 40 * MiB },
  { cs: 4 * KiB, ts: 16, size: 72 * MiB + 512 },
  { cs: 64 * KiB, ts: 4, size: 5 * GiB },
  { cs: 64 * KiB, ts: 16, size: GiB },
  { cs: MiB, ts: 4, size: 2 * GiB },
  { cs: MiB, ts: 16, size: 3 * GiB },
];

for (const { cs, ts, size } of geometries) {
  test(`qemu-made image: cluster ${cs / KiB}K, table ${ts}, ${size} bytes`, async (t) => {
    if (!needQemu(t)) return;
    const path = join(dir, `g-${cs}-${ts}.qed`);
    qemuImg('create', '-q', '-f', 'qed', '-o', `cluster_size=${cs},table_size=${ts}`, path, String(size));
    qemuIo(path, 'qed', workload(cs, ((ts * cs) / 8) * cs, size));
    const img = await checkImage(path);
    try {
      const map = await ourMap(img);
      assert.ok(map.some((e) => e.present && e.zero && !e.data), 'has zero clusters');
      assert.ok(map.some((e) => e.data), 'has data');
    } finally {
      await img.close();
    }
  });
}

test('a 1 TiB sparse image maps in a few steps', async (t) => {
  if (!needQemu(t)) return;
  const path = join(dir, 'huge.qed');
  const size = 1024 * GiB;
  qemuImg('create', '-q', '-f', 'qed', path, String(size));
  qemuIo(path, 'qed', ['write -P 9 700G 128k', `write -P 10 ${size - 64 * KiB} 64k`]);
  const img = await openImageFile(path);
  try {
    let steps = 0;
    for await (const e of extents(img)) {
      void e;
      steps++;
    }
    assert.ok(steps <= 8, `${steps} extents`);
    assert.deepEqual(await ourMap(img), qemuMap(path));
    const buf = new Uint8Array(192 * KiB);
    await img.read(700 * GiB - 64 * KiB, buf);
    assert.ok(buf.subarray(0, 64 * KiB).every((b) => b === 0));
    assert.ok(buf.subarray(64 * KiB).every((b) => b === 9));
    const tail = new Uint8Array(64 * KiB);
    await img.read(size - 64 * KiB, tail);
    assert.ok(tail.every((b) => b === 10));
  } finally {
    await img.close();
  }
});

test('NEED_CHECK set: read-only open reads the image; info as qemu-img', async (t) => {
  if (!needQemu(t)) return;
  const path = join(dir, 'dirty.qed');
  qemuImg('create', '-q', '-f', 'qed', path, '16M');
  qemuIo(path, 'qed', ['write -P 3 64k 128k']);
  const fh = await openFile(path, 'r+');
  await fh.write(new Uint8Array([2]), 0, 1, 16);
  await fh.close();
  const img = await checkImage(path);
  assert.equal((await img.info())['dirty-flag'], false);
  await img.close();
});

/** Backing-chain writes: a COW partial cluster, zero clusters over backing data, data past the backing file. */
const topWrites = ['write -P 1 512k 4k', 'write -z 1M 128k', 'write -P 2 7M 64k', 'write -P 3 3200k 1k', 'write -z 5M 64k'];

function makeRawBase(name: string): string {
  const path = join(dir, name);
  qemuImg('create', '-q', '-f', 'raw', path, '6M');
  qemuIo(path, 'raw', ['write -P 7 0 2M', 'write -P 8 3M 1M', 'write -P 9 5M 512k']);
  return path;
}

test('QED on a raw backing file (BACKING_FORMAT_NO_PROBE)', async (t) => {
  if (!needQemu(t)) return;
  makeRawBase('b1.raw');
  const top = join(dir, 'top1.qed');
  qemuImg('create', '-q', '-f', 'qed', '-b', 'b1.raw', '-F', 'raw', top, '8M');
  qemuIo(top, 'qed', topWrites);
  const img = await checkImage(top);
  assert.deepEqual(img.driver.backing, { name: 'b1.raw', format: 'raw' });
  assert.equal(img.backing?.format, 'raw');
  await img.close();
});

test('QED on a QED backing file (probed), and a three-level chain', async (t) => {
  if (!needQemu(t)) return;
  makeRawBase('b2.raw');
  const mid = join(dir, 'mid2.qed');
  qemuImg('create', '-q', '-f', 'qed', '-o', 'cluster_size=4k', '-b', 'b2.raw', '-F', 'raw', mid, '7M');
  qemuIo(mid, 'qed', ['write -P 4 0 8k', 'write -z 3M 256k', 'write -P 5 6M 8k']);
  const top = join(dir, 'top2.qed');
  qemuImg('create', '-q', '-f', 'qed', '-b', 'mid2.qed', '-F', 'qed', top, '8M');
  qemuIo(top, 'qed', topWrites);
  const img = await checkImage(top);
  assert.deepEqual(img.driver.backing, { name: 'mid2.qed' });
  assert.equal(img.backing?.format, 'qed');
  assert.ok((await ourMap(img)).some((e) => e.depth === 2));
  await img.close();
});

/** The qcow2 driver lives elsewhere; until it is registered these chains cannot open. */
async function openOrSkipWithoutQcow2(t: { skip(msg?: string): void }, path: string): Promise<boolean> {
  try {
    const img = await openImageFile(path);
    await img.close();
    return true;
  } catch (e) {
    if (isImageError(e) && /Unknown driver 'qcow2'/.test(e.message)) {
      t.skip('qcow2 driver not registered');
      return false;
    }
    throw e;
  }
}

test('QED on a qcow2 backing file', async (t) => {
  if (!needQemu(t)) return;
  const base = join(dir, 'b3.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', base, '6M');
  qemuIo(base, 'qcow2', ['write -P 7 0 2M', 'write -z 2M 1M', 'write -P 8 3M 1M']);
  const top = join(dir, 'top3.qed');
  qemuImg('create', '-q', '-f', 'qed', '-b', 'b3.qcow2', '-F', 'qcow2', top, '8M');
  qemuIo(top, 'qed', topWrites);
  if (!(await openOrSkipWithoutQcow2(t, top))) return;
  const img = await checkImage(top);
  assert.deepEqual(img.driver.backing, { name: 'b3.qcow2' });
  await img.close();
});

test('qcow2 on a QED backing file', async (t) => {
  if (!needQemu(t)) return;
  const base = join(dir, 'b4.qed');
  qemuImg('create', '-q', '-f', 'qed', '-o', 'cluster_size=4k,table_size=2', base, '6M');
  qemuIo(base, 'qed', ['write -P 7 0 2M', 'write -z 2M 1M', 'write -P 8 3M 1M']);
  const top = join(dir, 'top4.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-b', 'b4.qed', '-F', 'qed', top, '8M');
  qemuIo(top, 'qcow2', topWrites);
  if (!(await openOrSkipWithoutQcow2(t, top))) return;
  const img = await checkImage(top);
  assert.equal(img.backing?.format, 'qed');
  await img.close();
});
