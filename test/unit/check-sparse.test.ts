/**
 * check on a host file sparse-extended to tens of TiB: memory must follow
 * what the image references, not the file's length, and the result must
 * come back quickly and match qemu-img check. A hostile image that needs
 * more memory than the cap fails the check with QEMU's ENOMEM answer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';
import { checkQedImage } from '../../src/formats/qed/check.js';
import { parseHeader as parseQedHeader } from '../../src/formats/qed/header.js';
import { qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const TiB = 2 ** 40;
const MiB = 2 ** 20;

/**
 * The image's bytes, with a size() that claims `claimed` bytes (the rest
 * reads as zero, as a hole does), and the peak of ArrayBuffer memory seen
 * at any read: the check reads after it has sized its arrays.
 */
function sparseStorage(bytes: Uint8Array, claimed: number): Storage & { peakArrayBuffers: number } {
  const mem = new MemoryStorage(bytes, { writable: false, name: 'sparse' });
  const s = {
    name: 'sparse',
    writable: false,
    peakArrayBuffers: 0,
    size: async () => claimed,
    async read(into: Uint8Array, offset: number) {
      s.peakArrayBuffers = Math.max(s.peakArrayBuffers, process.memoryUsage().arrayBuffers);
      await mem.read(into, offset);
    },
    write: () => Promise.reject(new Error('read-only')),
    truncate: () => Promise.reject(new Error('read-only')),
    flush: async () => {},
    close: async () => {},
  };
  return s;
}

function makeImage(dir: string, name: string, fmt: string, opts: string, writes: string[]): Uint8Array {
  const path = join(dir, name);
  const c = qemuImg(['create', '-q', '-f', fmt, ...(opts ? ['-o', opts] : []), path, '1G']);
  assert.equal(c.status, 0, c.stderr);
  for (const w of writes) assert.equal(qemuIo(['-f', fmt, '-c', w, path]).status, 0);
  return new Uint8Array(readFileSync(path));
}

test('qcow2 check of a file claiming 40 TiB: memory follows the references, result as for the small file', { timeout: 120_000 }, async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  // 64-bit refcounts: a flat array for 40 TiB of 64 KiB clusters would be 5 GiB.
  const bytes = makeImage(dir, 'a.qcow2', 'qcow2', 'refcount_bits=64', ['write -P 7 0 1M', 'write -P 8 512M 64k']);
  const small = await checkQcow2(new MemoryStorage(bytes, { writable: false }), { fix: 'none' });
  const base = process.memoryUsage().arrayBuffers;
  const st = sparseStorage(bytes, 40 * TiB);
  const t0 = performance.now();
  const r = await checkQcow2(st, { fix: 'none' });
  const seconds = (performance.now() - t0) / 1000;
  const grew = st.peakArrayBuffers - base;
  assert.ok(grew < 64 * MiB, `check held ${Math.round(grew / MiB)} MiB of arrays`);
  assert.ok(seconds < 10, `check took ${seconds.toFixed(1)} s`);
  assert.equal(r.failed, undefined);
  assert.deepEqual([r.corruptions, r.leaks, r.checkErrors, r.imageEndOffset, r.allocatedClusters], [0, 0, 0, small.imageEndOffset, small.allocatedClusters]);
});

test('qcow2 check -r all of a sparse-extended file repairs within bounded memory', { timeout: 120_000 }, async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const bytes = makeImage(dir, 'b.qcow2', 'qcow2', 'refcount_bits=64', ['write -P 7 0 1M']);
  // Drop the first refcount table entry: the structure must be rebuilt from the computed refcounts.
  const v = new DataView(bytes.buffer, bytes.byteOffset);
  const reftable = Number(v.getBigUint64(48, false));
  const broken = bytes.slice();
  new DataView(broken.buffer).setBigUint64(reftable, 0n, false);
  const mem = new MemoryStorage(broken);
  const claimed = 40 * TiB;
  const base = process.memoryUsage().arrayBuffers;
  let peak = 0;
  const st: Storage = {
    name: 'sparse',
    writable: true,
    size: async () => Math.max(claimed, await mem.size()),
    read: async (into: Uint8Array, offset: number) => {
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
      await mem.read(into, offset);
    },
    write: (data, offset) => mem.write(data, offset),
    truncate: (size) => mem.truncate(size),
    flush: async () => {},
    close: async () => {},
  };
  const r = await checkQcow2(st, { fix: 'all' });
  assert.ok(peak - base < 64 * MiB, `repair held ${Math.round((peak - base) / MiB)} MiB of arrays`);
  assert.equal(r.failed, undefined, r.errors.join('; '));
  assert.ok(r.corruptionsFixed > 0);
  assert.equal(r.corruptions, 0);
  const again = await checkQcow2(new MemoryStorage(mem.bytes(), { writable: false }), { fix: 'none' });
  assert.equal(again.corruptions, 0, again.messages.slice(0, 3).join('; '));
});

test('qcow2 check answers ENOMEM, not a crash, when the references need more than the memory cap', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  // 512-byte clusters: 2 MiB of data is 4096 clusters, beyond one page of the array.
  const bytes = makeImage(dir, 'c.qcow2', 'qcow2', 'cluster_size=512,refcount_bits=64', ['write -P 7 0 2M']);
  const r = await checkQcow2(new MemoryStorage(bytes, { writable: false }), { fix: 'none', refcountMemoryLimit: 40 * 1024 });
  assert.equal(r.failed, 'Cannot allocate memory');
  assert.ok(r.checkErrors >= 1);
  const ok = await checkQcow2(new MemoryStorage(bytes, { writable: false }), { fix: 'none' });
  assert.equal(ok.failed, undefined);
});

test('QED check of a file claiming 40 TiB of 4 KiB clusters: bounded, leaks counted not walked', { timeout: 120_000 }, async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const bytes = makeImage(dir, 'd.qed', 'qed', 'cluster_size=4096', ['write -P 7 0 1M']);
  const small = parseQedHeader(bytes.subarray(0, 4096), bytes.length);
  const before = await checkQedImage(new MemoryStorage(bytes, { writable: false }), small.header, small.geometry, { fix: false });
  const claimed = 40 * TiB;
  const st = sparseStorage(bytes, claimed);
  const { header, geometry } = parseQedHeader(bytes.subarray(0, 4096), claimed);
  const base = process.memoryUsage().arrayBuffers;
  const t0 = performance.now();
  const r = await checkQedImage(st, header, geometry, { fix: false });
  const seconds = (performance.now() - t0) / 1000;
  assert.ok(st.peakArrayBuffers - base < 64 * MiB, `check held ${Math.round((st.peakArrayBuffers - base) / MiB)} MiB of arrays`);
  assert.ok(seconds < 10, `check took ${seconds.toFixed(1)} s`);
  assert.equal(r.corruptions, 0);
  assert.equal(r.checkErrors, 0);
  // Every cluster of the extension is unreferenced: the small file's leaks plus all the new clusters.
  assert.equal(r.leaks, before.leaks + (claimed - bytes.length) / 4096);
});

test('qimg check of a qcow2 file truncated up to 4 TiB prints and exits as qemu-img check', { timeout: 120_000 }, async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const path = join(dir, 'e.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', path, '1G']).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 7 0 1M', path]).status, 0);
  // A hole: no disk space is used (ext4 and tmpfs allow files of this length).
  truncateSync(path, 4 * TiB);
  const q = qemuImg(['check', path]);
  const t0 = performance.now();
  const m = qimg(['check', path]);
  const seconds = (performance.now() - t0) / 1000;
  assert.equal(m.status, q.status, m.stderr);
  assert.equal(m.stdout, q.stdout);
  assert.ok(seconds < 20, `qimg check took ${seconds.toFixed(1)} s`);
});
