/**
 * rebaseImage, commitImage and ddImage as a program uses them, on images
 * in memory: the guest view survives a rebase (and the image then opens
 * with only the new backing file), a commit makes the base read as the top
 * did and empties the top, dd copies the range planDd describes; progress
 * grows to the total and an aborted signal stops before anything changes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createImage } from '../../src/block/create.js';
import { extents } from '../../src/block/image.js';
import { openStorageImage } from '../../src/block/open.js';
import { isImageError } from '../../src/errors.js';
import { MemoryStorage } from '../../src/io/memory.js';
import { commitImage } from '../../src/ops/commit.js';
import { ddImage, planDd } from '../../src/ops/dd.js';
import { rebaseImage } from '../../src/ops/rebase.js';
import '../../src/formats/index.js';

const MiB = 1 << 20;
const fill = (n: number, v: number) => new Uint8Array(n).fill(v);

async function qcow2(backing?: string): Promise<MemoryStorage> {
  const s = new MemoryStorage();
  await createImage(s, { format: 'qcow2', size: MiB, clusterSize: 4096, ...(backing ? { backingFile: backing, backingFormat: 'qcow2' } : {}) } as never);
  return s;
}

async function write(s: MemoryStorage, name: string, files: Record<string, MemoryStorage>, at: number, data: Uint8Array): Promise<void> {
  const img = await openStorageImage(s, { name, files, writable: true });
  await img.write(at, data);
  await img.close();
}

async function contents(s: MemoryStorage, name: string, files: Record<string, MemoryStorage>): Promise<Uint8Array> {
  const img = await openStorageImage(s, { name, files });
  const b = new Uint8Array(img.size);
  await img.read(0, b);
  await img.close();
  return b;
}

async function fixture() {
  const base = await qcow2();
  await write(base, 'base', {}, 0, fill(256 * 1024, 1));
  const other = await qcow2();
  await write(other, 'other', {}, 128 * 1024, fill(256 * 1024, 2));
  const top = await qcow2('base');
  await write(top, 'top', { base }, 64 * 1024, fill(8 * 1024, 3));
  return { base, other, top };
}

test('rebaseImage keeps the guest view and switches the backing file last', async () => {
  const { base, other, top } = await fixture();
  const before = await contents(top, 'top', { base });
  const img = await openStorageImage(top, { name: 'top', files: { base }, writable: true });
  const newBacking = await openStorageImage(other, { name: 'other' });
  const seen: number[] = [];
  await rebaseImage(img, newBacking, { backingFile: 'other', backingFormat: 'qcow2', onProgress: (d, t) => seen.push(d / t) });
  await img.close();
  await newBacking.close();
  // Opens without the old backing file at all.
  assert.deepEqual(await contents(top, 'top', { other }), before);
  assert.ok(seen.every((x, i) => i === 0 || x >= seen[i - 1]!));
  assert.equal(seen.at(-1), 1);
});

test('rebaseImage onto nothing flattens; an aborted rebase changes nothing', async () => {
  const { base, top } = await fixture();
  const before = await contents(top, 'top', { base });
  const snapshot = top.bytes().slice();
  const img = await openStorageImage(top, { name: 'top', files: { base }, writable: true });
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(rebaseImage(img, null, { backingFile: '', signal: ac.signal }), (e) => isImageError(e, 'aborted'));
  assert.deepEqual(top.bytes(), snapshot);
  await rebaseImage(img, null, { backingFile: '' });
  await img.close();
  assert.deepEqual(await contents(top, 'top', {}), before);
});

test('commitImage writes the top into the base and empties the top', async () => {
  const { base, top } = await fixture();
  const before = await contents(top, 'top', { base });
  const img = await openStorageImage(top, { name: 'top', files: { base }, writable: true });
  const writableBase = await openStorageImage(base, { name: 'base', writable: true });
  await commitImage(img, { base: writableBase });
  await img.close();
  await writableBase.close();
  assert.deepEqual(await contents(base, 'base', {}), before);
  const emptied = await openStorageImage(top, { name: 'top', files: { base } });
  for await (const e of extents(emptied)) assert.ok(e.depth > 0 || !e.present, `top still allocates ${e.offset}`);
  await emptied.close();
  assert.deepEqual(await contents(top, 'top', { base }), before);
});

test('commitImage refuses an image without a backing file', async () => {
  const { base } = await fixture();
  const img = await openStorageImage(base, { name: 'base', writable: true });
  await assert.rejects(commitImage(img), /Image does not have a backing file/);
  await img.close();
});

test('planDd and ddImage: count from the start of the input, skip from there', async () => {
  assert.deepEqual(planDd(10_000, { blockSize: 1000, count: 5, skip: 2 }), { start: 2000, end: 5000, outputSize: 3000, skipPastEnd: false });
  assert.deepEqual(planDd(10_000, { blockSize: 1000, count: 50 }), { start: 0, end: 10_000, outputSize: 10_000, skipPastEnd: false });
  assert.equal(planDd(10_000, { blockSize: 1000, skip: 11 }).skipPastEnd, true);
  assert.throws(() => planDd(1, { blockSize: 0 }), /Invalid bs specified/);
  const { base, top } = await fixture();
  const src = await openStorageImage(top, { name: 'top', files: { base } });
  const out = new MemoryStorage();
  await createImage(out, { format: 'raw', size: 200 * 1024 });
  const dst = await openStorageImage(out, { name: 'out', format: 'raw', writable: true });
  await ddImage(src, dst, { blockSize: 4096, count: 100, skip: 50 });
  await dst.close();
  const all = await contents(top, 'top', { base });
  assert.deepEqual(out.bytes().subarray(0, 200 * 1024), all.subarray(50 * 4096, 100 * 4096));
  await src.close();
});
