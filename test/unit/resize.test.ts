/**
 * resizeImage on images in memory: sizes seen by readers, data kept across
 * a grow (in place and with a moved L1 table) and dropped by a shrink, the
 * library's refusals, and our check finding every result clean.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createImage, isImageError, MemoryStorage, openStorageImage, resizeImage, type Image } from '../../src/index.js';
import { checkImageStorage } from '../../src/block/check.js';
import type { Qcow2Driver } from '../../src/formats/qcow2/qcow2.js';

const MiB = 1 << 20;
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

async function readBack(img: Image, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await img.read(offset, b);
  return b;
}

async function fresh(format: 'qcow2' | 'qed' | 'raw', size: number, extra: Record<string, unknown> = {}): Promise<{ storage: MemoryStorage; img: Image }> {
  const storage = new MemoryStorage();
  await createImage(storage, { format, size, ...extra } as Parameters<typeof createImage>[1]);
  const img = await openStorageImage(storage, { writable: true, format });
  return { storage, img };
}

async function assertClean(storage: MemoryStorage, format: 'qcow2' | 'qed'): Promise<void> {
  const r = await checkImageStorage(storage, format, 'none');
  assert.equal(r.counts.corruptions, 0, r.messages.join('; '));
  assert.equal(r.counts.leaks, 0, r.messages.join('; '));
}

for (const v of [
  { name: 'qcow2, L1 extended in place', size: MiB, grown: 2 * 2 ** 40, extra: {}, moves: false },
  { name: 'qcow2, L1 moved', size: MiB, grown: 64 * MiB, extra: { clusterSize: 512 }, moves: true },
  { name: 'qcow2 v2, L1 moved', size: MiB, grown: 64 * MiB, extra: { clusterSize: 512, version: 2 }, moves: true },
]) {
  test(`grow keeps data and the new area reads zero: ${v.name}`, async () => {
    const { storage, img } = await fresh('qcow2', v.size, v.extra);
    await img.write(v.size - 4096, fill(4096, 0x5a));
    await img.flush();
    const h = (img.driver as Qcow2Driver).header;
    const l1At = h.l1TableOffset;
    await resizeImage(img, v.grown);
    assert.equal(img.size, v.grown);
    assert.equal(h.l1TableOffset !== l1At, v.moves);
    assert.deepEqual(await readBack(img, v.size - 4096, 4096), fill(4096, 0x5a));
    assert.deepEqual(await readBack(img, v.grown - 4096, 4096), fill(4096, 0));
    await img.write(v.grown - 512, fill(512, 7));
    await img.close();
    await assertClean(storage, 'qcow2');
    const again = await openStorageImage(storage, { format: 'qcow2' });
    assert.equal(again.size, v.grown);
    assert.deepEqual(await readBack(again, v.grown - 512, 512), fill(512, 7));
    assert.deepEqual(await readBack(again, v.size - 4096, 4096), fill(4096, 0x5a));
    await again.close();
  });
}

test('qcow2 shrink drops the clusters past the end and leaks nothing', async () => {
  const { storage, img } = await fresh('qcow2', 8 * MiB, { clusterSize: 4096 });
  await img.write(0, fill(8 * MiB, 3));
  await resizeImage(img, 3 * MiB + 512, { shrink: true });
  assert.equal(img.size, 3 * MiB + 512);
  await assert.rejects(img.read(4 * MiB, new Uint8Array(1)), (e) => isImageError(e, 'bad-argument'));
  await resizeImage(img, 8 * MiB);
  // The partial cluster at the old end keeps its bytes (as in qemu); whole clusters past it are gone.
  assert.deepEqual(await readBack(img, 0, 3 * MiB), fill(3 * MiB, 3));
  assert.deepEqual(await readBack(img, 3 * MiB + 4096, 4096), fill(4096, 0));
  await img.close();
  await assertClean(storage, 'qcow2');
  const r = await checkImageStorage(storage, 'qcow2', 'none');
  assert.equal(r.counts.allocatedClusters, (3 * MiB) / 4096 + 1, 'only the clusters below the shrunk size stay allocated');
});

test('QED grows within its tables; raw follows the file', async () => {
  const q = await fresh('qed', MiB);
  await q.img.write(MiB - 512, fill(512, 9));
  await resizeImage(q.img, 3 * MiB);
  assert.equal(q.img.size, 3 * MiB);
  await q.img.write(3 * MiB - 512, fill(512, 8));
  assert.deepEqual(await readBack(q.img, MiB - 512, 512), fill(512, 9));
  await assert.rejects(resizeImage(q.img, MiB, { shrink: true }), /Shrinking images is currently not supported/);
  await q.img.close();
  await assertClean(q.storage, 'qed');

  const r = await fresh('raw', MiB);
  await resizeImage(r.img, 2 * MiB + 1, { preallocation: 'full' });
  assert.equal(r.img.size, 2 * MiB + 512);
  assert.equal(await r.storage.size(), 2 * MiB + 1);
  await resizeImage(r.img, 1000, { shrink: true });
  assert.equal(r.img.size, 1024);
  await r.img.close();
});

test('refusals: no shrink without the option, read-only images, bad sizes and modes', async () => {
  const { storage, img } = await fresh('qcow2', MiB);
  await assert.rejects(resizeImage(img, MiB / 2), /Use the --shrink option/);
  await assert.rejects(resizeImage(img, 0), /New image size must be positive/);
  await assert.rejects(resizeImage(img, 2 * MiB, { preallocation: 'bogus' as never }), /Invalid preallocation mode 'bogus'/);
  await assert.rejects(resizeImage(img, MiB / 2, { shrink: true, preallocation: 'full' }), /Preallocation can't be used for shrinking an image/);
  await assert.rejects(resizeImage(img, MiB + 1), /The new size must be a multiple of 512/);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(resizeImage(img, 2 * MiB, { signal: ac.signal }), (e) => isImageError(e, 'aborted'));
  assert.equal(img.size, MiB);
  await img.close();
  const ro = await openStorageImage(storage, { format: 'qcow2' });
  await assert.rejects(resizeImage(ro, 2 * MiB), (e) => isImageError(e, 'read-only'));
  await ro.close();
});

test('writes racing a grow land, and land inside the size they were issued against', async () => {
  const { storage, img } = await fresh('qcow2', MiB, { clusterSize: 512 });
  const writes = Array.from({ length: 32 }, (_, i) => img.write(i * 32 * 1024, fill(512, i + 1)));
  const grow = resizeImage(img, 32 * MiB);
  await Promise.all([...writes, grow]);
  for (let i = 0; i < 32; i++) assert.deepEqual(await readBack(img, i * 32 * 1024, 512), fill(512, i + 1));
  await img.close();
  await assertClean(storage, 'qcow2');
});
