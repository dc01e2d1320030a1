import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Cluster, Sub, clusterType, decodeCompressed, encodeCompressed, entryOffset, subclusterType, words } from '../../src/formats/qcow2/l2.js';
import { entryAt } from '../../src/formats/qcow2/refcount.js';

test('standard L2 entry types', () => {
  const cases: Array<[bigint, boolean, number, string]> = [
    [0n, false, Cluster.UNALLOCATED, 'all zero'],
    [0x8000000000050000n, false, Cluster.NORMAL, 'copied, offset'],
    [0x0000000000050000n, false, Cluster.NORMAL, 'offset, refcount > 1'],
    [1n, false, Cluster.ZERO_PLAIN, 'zero flag, no offset'],
    [0x8000000000050001n, false, Cluster.ZERO_ALLOC, 'zero flag with offset'],
    // Compressed wins over the zero flag: bit 0 is part of the byte offset here.
    [0x4040000000050001n, false, Cluster.COMPRESSED, 'compressed, odd offset'],
    [0x8000000000000000n, false, Cluster.UNALLOCATED, 'copied without offset, no data file'],
    [0x8000000000000000n, true, Cluster.NORMAL, 'copied without offset, data file: guest offset 0'],
    [0x0000000000000000n, true, Cluster.UNALLOCATED, 'no copied, data file'],
  ];
  for (const [entry, dataFile, want, why] of cases) {
    const [hi, lo] = words(entry);
    assert.equal(clusterType(hi, lo, false, dataFile), want, why);
  }
  // With extended L2 the zero flag does not exist.
  const [hi, lo] = words(1n);
  assert.equal(clusterType(hi, lo, true, false), Cluster.UNALLOCATED);
});

test('entry offsets: bits 9..55, above 2^53 refused', () => {
  assert.equal(entryOffset(...words(0x80000000000501ffn)), 0x50000);
  assert.equal(entryOffset(...words(0x001fffff_fffffe00n)), 2 ** 53 - 512);
  assert.throws(() => entryOffset(...words(0x00200000_00000000n)), /2\^53/);
});

test('extended L2 subcluster types', () => {
  const N = Cluster.NORMAL;
  const U = Cluster.UNALLOCATED;
  // [cluster type, alloc bits, zero bits, subcluster, expected]
  const cases: Array<[typeof N | typeof U | typeof Cluster.COMPRESSED, number, number, number, number]> = [
    [N, 0b1, 0, 0, Sub.NORMAL],
    [N, 0b1, 0, 1, Sub.UNALLOCATED_ALLOC],
    [N, 0b1, 0b10, 1, Sub.ZERO_ALLOC],
    [N, 0b11, 0b10, 0, Sub.INVALID], // a subcluster both allocated and zero
    [N, 0x80000000, 0, 31, Sub.NORMAL],
    [U, 0, 0, 5, Sub.UNALLOCATED_PLAIN],
    [U, 0, 1 << 5, 5, Sub.ZERO_PLAIN],
    [U, 0, 0xffffffff, 31, Sub.ZERO_PLAIN],
    [U, 1 << 3, 0, 0, Sub.INVALID], // unallocated cluster with an alloc bit
    [Cluster.COMPRESSED, 0, 0, 7, Sub.COMPRESSED],
  ];
  for (const [ct, alloc, zero, sc, want] of cases) {
    assert.equal(subclusterType(ct, true, alloc >>> 0, zero >>> 0, sc), want, `${ct} ${alloc} ${zero} ${sc}`);
  }
  // Without extended L2 the bitmap is ignored.
  assert.equal(subclusterType(Cluster.ZERO_ALLOC, false, 0, 0, 0), Sub.ZERO_ALLOC);
  assert.equal(subclusterType(Cluster.UNALLOCATED, false, 0, 0, 0), Sub.UNALLOCATED_PLAIN);
});

test('compressed descriptors: worked examples', () => {
  // 2 MiB clusters (iotest 214): offset 0xa00000, field 4 -> 5 sectors.
  let d = decodeCompressed(...words(0x4008000000a00000n), 21);
  assert.deepEqual(d, { hostOffset: 0xa00000, sectors: 5, csize: 5 * 512 });
  // 64 KiB clusters, payload A: 1000 bytes at 0x50000.
  assert.equal(encodeCompressed(0x50000, 1000, 16), 0x4040000000050000n);
  d = decodeCompressed(...words(0x4040000000050000n), 16);
  assert.deepEqual(d, { hostOffset: 0x50000, sectors: 2, csize: 1024 });
  // Payload B: 500 bytes at 0x503e8, packed after A.
  assert.equal(encodeCompressed(0x503e8, 500, 16), 0x40400000000503e8n);
  d = decodeCompressed(...words(0x40400000000503e8n), 16);
  assert.deepEqual(d, { hostOffset: 0x503e8, sectors: 2, csize: 1024 - 0x1e8 });
});

test('compressed descriptors round-trip for every cluster size', () => {
  for (let bits = 9; bits <= 21; bits++) {
    const cs = 2 ** bits;
    for (const [off, len] of [
      [0x12345, 1],
      [0x10000, cs],
      [2 ** 40 + 7, Math.max(1, cs - 1)],
      [511, 2],
    ] as const) {
      const e = encodeCompressed(off, len, bits);
      const d = decodeCompressed(...words(e), bits);
      assert.equal(d.hostOffset, off, `bits ${bits}`);
      assert.equal(d.sectors, Math.floor((off + len - 1) / 512) - Math.floor(off / 512) + 1);
      assert.ok(d.csize >= len, 'csize covers the payload');
      assert.ok(e < 1n << 63n, 'never the copied flag');
    }
  }
  // Largest sector count: the field saturates its width.
  const max = decodeCompressed(...words((1n << 62n) | (0xffn << 54n)), 16);
  assert.equal(max.sectors, 256);
});

test('refcount entries of every width', () => {
  const b = new Uint8Array([0b10100101, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0]);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((i) => entryAt(b, i, 0)), [1, 0, 1, 0, 0, 1, 0, 1]);
  assert.deepEqual([0, 1, 2, 3].map((i) => entryAt(b, i, 1)), [1, 1, 2, 2]);
  assert.deepEqual([0, 1].map((i) => entryAt(b, i, 2)), [5, 10]);
  assert.equal(entryAt(b, 1, 3), 0x12);
  assert.equal(entryAt(b, 1, 4), 0x3456);
  assert.equal(entryAt(b, 1, 5), 0x789abcde);
  assert.equal(entryAt(b, 0, 6), 0xa5123456 * 2 ** 32 + 0x789abcde);
});
