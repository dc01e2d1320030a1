/**
 * The raw driver against qemu-img 7.2: virtual size in whole sectors, zeros
 * past the end of the file, info, and block status of sparse files.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync, truncateSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageFile } from '../../src/node.js';
import { extents, type Image } from '../../src/block/image.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'qimg-raw-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function needQemu(t: { skip(msg?: string): void }): boolean {
  if (haveQemu) return true;
  if (process.env.CI) assert.fail('qemu-img is required when CI is set');
  t.skip('qemu-img not installed');
  return false;
}

function qemuImg(...args: string[]): string {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
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
  return (JSON.parse(qemuImg('map', '-f', 'raw', '--output=json', path)) as MapEntry[]).map(({ start, length, depth, present, zero, data, offset }) =>
    offset === undefined ? { start, length, depth, present, zero, data } : { start, length, depth, present, zero, data, offset },
  );
}

/** extents() merged as qemu-img map merges. */
async function ourMap(img: Image): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  for await (const x of extents(img)) {
    const e: MapEntry = { start: x.offset, length: x.length, depth: x.depth, present: x.present, zero: x.zero, data: x.data };
    if (x.hostOffset !== undefined) e.offset = x.hostOffset;
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
    } else out.push(e);
  }
  return out;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

function writeAt(path: string, at: number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, bytes, 0, bytes.length, at);
  closeSync(fd);
}

test('a 1000-byte file: size rounded up to 512, the tail reads as zero, info and map as qemu-img', async (t) => {
  const path = join(dir, 'r1000.raw');
  const content = pattern(1000, 7);
  writeFileSync(path, content);
  const img = await openImageFile(path);
  try {
    assert.equal(img.format, 'raw');
    assert.equal(img.size, 1024);
    const all = new Uint8Array(1024).fill(0xee);
    await img.read(0, all);
    assert.deepEqual(all.subarray(0, 1000), content);
    assert.ok(all.subarray(1000).every((b) => b === 0));
    const tail = new Uint8Array(20).fill(0xee);
    await img.read(1002, tail);
    assert.ok(tail.every((b) => b === 0));
    if (!needQemu(t)) return;
    const info = JSON.parse(qemuImg('info', '--output=json', path)) as Record<string, unknown>;
    assert.deepEqual({ ...(await img.info()) }, info);
    assert.deepEqual(await ourMap(img), qemuMap(path));
  } finally {
    await img.close();
  }
});

test('sizes already a multiple of 512 stay as they are; an empty file is empty', async () => {
  for (const [n, want] of [
    [0, 0],
    [1, 512],
    [512, 512],
    [513, 1024],
  ] as const) {
    const path = join(dir, `s${n}.raw`);
    writeFileSync(path, new Uint8Array(n));
    const img = await openImageFile(path, { format: 'raw' });
    assert.equal(img.size, want, `file of ${n} bytes`);
    await img.close();
  }
});

test('block status of sparse files equals qemu-img map', async (t) => {
  if (!needQemu(t)) return;
  const layouts: Array<{ name: string; size: number; writes: Array<[number, number]> }> = [
    { name: 'holes', size: 10 * MiB, writes: [[400 * KiB, 12 * KiB], [5 * MiB + 100, 10], [10 * MiB - 4 * KiB, 4 * KiB]] },
    { name: 'all-hole-odd', size: 10001, writes: [] },
    { name: 'data-then-hole-odd', size: 3 * MiB + 700, writes: [[0, 64 * KiB], [2 * MiB, 1 * MiB + 700]] },
    { name: 'dense', size: 256 * KiB, writes: [[0, 256 * KiB]] },
  ];
  for (const l of layouts) {
    const path = join(dir, `${l.name}.raw`);
    writeFileSync(path, new Uint8Array(0));
    truncateSync(path, l.size);
    for (const [i, [at, n]] of l.writes.entries()) writeAt(path, at, pattern(n, i + 1));
    const img = await openImageFile(path, { format: 'raw' });
    try {
      assert.deepEqual(await ourMap(img), qemuMap(path), l.name);
      const all = new Uint8Array(img.size);
      await img.read(0, all);
      const file = readFileSync(path);
      assert.ok(Buffer.from(all.subarray(0, file.length)).equals(file), l.name);
      assert.ok(all.subarray(file.length).every((b) => b === 0), l.name);
      const info = JSON.parse(qemuImg('info', '-f', 'raw', '--output=json', path)) as Record<string, unknown>;
      assert.deepEqual({ ...(await img.info()) }, info, l.name);
    } finally {
      await img.close();
    }
  }
});
