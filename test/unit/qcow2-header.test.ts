import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageError } from '../../src/errors.js';
import { MemoryStorage } from '../../src/io/memory.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import type { DriverContext } from '../../src/block/driver.js';
import { parseHeader, serializeHeader, type Qcow2Header } from '../../src/formats/qcow2/header.js';
import { openQcow2 } from '../../src/formats/qcow2/qcow2.js';

function haveQemu(): boolean {
  try {
    execFileSync('qemu-img', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    if (process.env.CI) throw new Error('qemu-img is required when CI is set');
    return false;
  }
}
const QEMU = haveQemu();

const FEATURES = [
  { type: 0, bit: 0, name: 'dirty bit' },
  { type: 0, bit: 1, name: 'corrupt bit' },
  { type: 0, bit: 2, name: 'external data file' },
  { type: 0, bit: 3, name: 'compression type' },
  { type: 0, bit: 4, name: 'extended L2 entries' },
  { type: 1, bit: 0, name: 'lazy refcounts' },
  { type: 2, bit: 0, name: 'bitmaps' },
  { type: 2, bit: 1, name: 'raw external data' },
];

/** A fresh image's header as QEMU lays it out: header, reftable, refblock, L1. */
function baseHeader(over: Partial<Qcow2Header> = {}): Qcow2Header {
  const clusterBits = over.clusterBits ?? 16;
  const cs = 2 ** clusterBits;
  return {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits,
    clusterSize: cs,
    size: 1 << 20,
    cryptMethod: 0,
    l1Size: 1,
    l1TableOffset: 3 * cs,
    refcountTableOffset: cs,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: 112,
    compressionType: 0,
    unknownFields: new Uint8Array(0),
    extensions: { bitmapsInconsistent: false, unknown: [], featureTable: FEATURES },
    ...over,
  };
}

/** Header plus reftable (-> cluster 2), refblock (clusters 0..3 = 1) and an empty L1; `extra` more clusters. */
function buildImage(h: Qcow2Header, extra = 0): Uint8Array {
  const cs = h.clusterSize;
  const img = new Uint8Array(cs * (4 + extra));
  img.set(serializeHeader(h));
  const v = new DataView(img.buffer);
  v.setBigUint64(cs, BigInt(2 * cs), false);
  for (let i = 0; i < 4; i++) v.setUint16(2 * cs + 2 * i, 1, false);
  return img;
}

function ctxFor(bytes: Uint8Array, over: Partial<DriverContext> = {}): DriverContext {
  return {
    storage: new MemoryStorage(bytes, { writable: false }),
    writable: false,
    codecs: nodeCodecs,
    metadataOnly: false,
    openDataFile: async (name) => {
      throw new ImageError('not-found', `no data file ${name} in this test`);
    },
    ...over,
  };
}

async function openError(bytes: Uint8Array): Promise<string> {
  try {
    const d = await openQcow2(ctxFor(bytes));
    await d.close();
  } catch (e) {
    assert.ok(e instanceof ImageError, `an ImageError, got ${String(e)}`);
    return e.message;
  }
  return '(opened)';
}

/** What qemu-img info says about the same bytes: the text after "Could not open 'FILE': ". */
function qemuError(dir: string, bytes: Uint8Array): string {
  const file = join(dir, 'poked.qcow2');
  writeFileSync(file, bytes);
  const r = spawnSync('qemu-img', ['info', '-f', 'qcow2', file], { encoding: 'utf8' });
  if (r.status === 0) return '(opened)';
  const prefix = `qemu-img: Could not open '${file}': `;
  const line = r.stderr.split('\n').find((l) => l.startsWith(prefix));
  return line ? line.slice(prefix.length) : r.stderr.trim();
}

test('header round trip: parse(serialize(h)) keeps every field', () => {
  const h = baseHeader({
    incompatibleFeatures: 0x19n,
    compatibleFeatures: 1n | (1n << 40n),
    autoclearFeatures: 1n,
    compressionType: 1,
    refcountOrder: 6,
    unknownFields: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]),
    backingFile: 'base.qcow2',
    extensions: {
      bitmapsInconsistent: false,
      backingFormat: 'qcow2',
      dataFile: 'data.raw',
      featureTable: FEATURES,
      bitmaps: { nbBitmaps: 2, directorySize: 80, directoryOffset: 0x50000 },
      unknown: [{ magic: 0x12345678, data: new Uint8Array([9, 8, 7]) }],
    },
  });
  const bytes = serializeHeader(h);
  const p = parseHeader(bytes);
  assert.equal(p.headerLength, 120);
  assert.equal(p.backingFileSize, 10);
  assert.deepEqual({ ...p, headerLength: 112, backingFileOffset: 0, backingFileSize: 0 }, h);
  assert.deepEqual(serializeHeader(p), bytes);

  // v2: no v3 fields, refcount order 4, no header_length field.
  const v2 = parseHeader(serializeHeader(baseHeader({ version: 2, extensions: { bitmapsInconsistent: false, unknown: [] } })));
  assert.equal(v2.version, 2);
  assert.equal(v2.headerLength, 72);
  assert.equal(v2.refcountOrder, 4);
  assert.equal(v2.incompatibleFeatures, 0n);
});

test('a minimal built image opens', async () => {
  const d = await openQcow2(ctxFor(buildImage(baseHeader())));
  assert.equal(d.size, 1 << 20);
  const m = await d.getMapping(0, d.size);
  assert.deepEqual(m, { kind: 'unallocated', length: 1 << 20 });
  await d.close();
});

type Poke = (v: DataView, b: Uint8Array) => void;
const CS = 65536;
const u32 = (off: number, val: number): Poke => (v) => v.setUint32(off, val, false);
const u64 = (off: number, val: bigint): Poke => (v) => v.setBigUint64(off, val, false);

const cases: Array<{ name: string; image?: () => Uint8Array; poke: Poke; message: string; qemuOnlyVia?: string }> = [
  { name: 'magic', poke: u32(0, 0x514649fa), message: 'Image is not in qcow2 format' },
  { name: 'version 1', poke: u32(4, 1), message: 'Unsupported qcow2 version 1' },
  { name: 'version 4', poke: u32(4, 4), message: 'Unsupported qcow2 version 4' },
  { name: 'cluster bits 8', poke: u32(20, 8), message: 'Unsupported cluster size: 2^8' },
  { name: 'cluster bits 22', poke: u32(20, 22), message: 'Unsupported cluster size: 2^22' },
  { name: 'header too short', poke: u32(100, 100), message: 'qcow2 header too short' },
  { name: 'header exceeds cluster', poke: u32(100, CS + 8), message: 'qcow2 header exceeds cluster size' },
  { name: 'backing offset', poke: u64(8, BigInt(CS + 1)), message: 'Invalid backing file offset' },
  { name: 'unknown incompatible bit', poke: u64(72, 1n << 5n), message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 20' },
  {
    name: 'named and unnamed incompatible bits',
    image: () => {
      const h = baseHeader();
      h.extensions.featureTable = [...FEATURES, { type: 0, bit: 7, name: 'future thing' }];
      return buildImage(h);
    },
    poke: u64(72, (1n << 7n) | (1n << 40n) | (1n << 9n)),
    message: 'Unsupported qcow2 feature(s): future thing, Unknown incompatible feature: 10000000200',
  },
  { name: 'refcount order 7', poke: u32(96, 7), message: 'Reference count entry width too large; may not exceed 64 bits' },
  { name: 'compression type 2', poke: (v, b) => (b[104] = 2), message: 'qcow2: unknown compression type: 2' },
  { name: 'zstd without bit', poke: (v, b) => (b[104] = 1), message: 'qcow2: Compression type incompatible feature bit must be set' },
  { name: 'zlib with bit', poke: u64(72, 8n), message: 'qcow2: Compression type incompatible feature bit must not be set' },
  { name: 'no refcount table', poke: u32(56, 0), message: 'Image does not contain a reference count table' },
  { name: 'refcount table too large', poke: u32(56, 129), message: 'Reference count table too large' },
  { name: 'refcount table unaligned', poke: u64(48, BigInt(CS + 512)), message: 'Reference count table offset invalid' },
  { name: 'refcount table overflow', poke: u64(48, 0x7fffffffffff0000n), message: 'Reference count table offset invalid' },
  { name: 'too many snapshots', poke: u32(60, 65537), message: 'Snapshot table too large' },
  { name: 'snapshot table unaligned', poke: u64(64, 0x1000n), message: 'Snapshot table offset invalid' },
  { name: 'L1 too large', poke: u32(36, 0x400001), message: 'Active L1 table too large' },
  { name: 'L1 unaligned', poke: u64(40, BigInt(3 * CS + 8)), message: 'Active L1 table offset invalid' },
  { name: 'L1 too small', poke: u32(36, 0), message: 'L1 table is too small' },
  {
    name: 'image too big',
    image: () => buildImage(baseHeader({ clusterBits: 9, l1Size: 1 })),
    poke: u64(24, 1n << 47n),
    message: 'Image is too big',
  },
  { name: 'encryption method 3', poke: u32(32, 3), message: 'Unsupported encryption method 3' },
  {
    name: 'extension too large',
    image: () => buildImage(baseHeader({ extensions: { bitmapsInconsistent: false, unknown: [{ magic: 0x11223344, data: new Uint8Array(8) }] } })),
    poke: u32(116, CS),
    message: 'Header extension too large',
  },
  {
    name: 'backing format too long',
    image: () => buildImage(baseHeader({ backingFile: 'b', extensions: { bitmapsInconsistent: false, unknown: [], backingFormat: 'x'.repeat(16) } })),
    poke: () => {},
    message: 'ERROR: ext_backing_format: len=16 too large (>=16)',
  },
  {
    name: 'backing name too long',
    image: () => buildImage(baseHeader({ backingFile: 'base' })),
    poke: u32(16, 1024),
    message: 'Backing file name too long',
  },
  {
    name: 'subclusters below 512 bytes',
    image: () => buildImage(baseHeader({ clusterBits: 12, l1Size: 1 })),
    poke: u64(72, 16n),
    message: 'Unsupported subcluster size: 128',
  },
  {
    name: 'crypto header without LUKS',
    image: () =>
      buildImage(baseHeader({ extensions: { bitmapsInconsistent: false, unknown: [], cryptoHeader: { offset: 4 * CS, length: 4096 } } })),
    poke: () => {},
    message: 'CRYPTO header extension only expected with LUKS encryption method',
  },
  {
    name: 'snapshot extra data too large',
    image: () => buildImage(baseHeader({ nbSnapshots: 1, snapshotsOffset: 4 * CS }), 1),
    poke: u32(4 * CS + 36, 1025),
    message: 'Too much extra metadata in snapshot table entry 0',
  },
  {
    name: 'bitmaps extension with zero bitmaps',
    image: () =>
      buildImage(
        baseHeader({
          autoclearFeatures: 1n,
          extensions: { bitmapsInconsistent: false, unknown: [], bitmaps: { nbBitmaps: 1, directorySize: 32, directoryOffset: 4 * CS } },
        }),
      ),
    poke: u32(120, 0),
    message: 'found bitmaps extension with zero bitmaps',
  },
];

test('header validation: QEMU 7.2 messages', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qimg-qcow2-hdr-'));
  try {
    for (const c of cases) {
      await t.test(c.name, async () => {
        const bytes = c.image ? c.image() : buildImage(baseHeader());
        c.poke(new DataView(bytes.buffer), bytes);
        assert.equal(await openError(bytes), c.message);
        if (QEMU) assert.equal(qemuError(dir, bytes), c.message, 'qemu-img agrees');
      });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('corrupt images open read-only, not read-write', async () => {
  const bytes = buildImage(baseHeader({ incompatibleFeatures: 2n }));
  const d = await openQcow2(ctxFor(bytes));
  assert.equal((await d.info()).formatSpecific?.data.corrupt, true);
  await assert.rejects(openQcow2(ctxFor(bytes, { writable: true })), { message: 'qcow2: Image is corrupt; cannot be opened read/write' });
});

test('dirty images open read-only and report dirty-flag', async () => {
  const d = await openQcow2(ctxFor(buildImage(baseHeader({ incompatibleFeatures: 1n }))));
  assert.equal((await d.info()).dirty, true);
});

test('data file requirements', async () => {
  const noName = buildImage(baseHeader({ incompatibleFeatures: 4n }));
  await assert.rejects(openQcow2(ctxFor(noName)), { message: "'data-file' is required for this image" });
  // qemu-img info does not need it.
  const d = await openQcow2(ctxFor(noName, { metadataOnly: true }));
  assert.equal((await d.info()).formatSpecific?.data['data-file-raw'], false);
  const rawWithout = buildImage(baseHeader({ autoclearFeatures: 2n }));
  await assert.rejects(openQcow2(ctxFor(rawWithout)), { message: 'data-file-raw requires a data file' });
  await assert.rejects(openQcow2(ctxFor(buildImage(baseHeader()), { dataFile: new MemoryStorage() })), {
    message: "'data-file' can only be set for images with an external data file",
  });
});

test('tables past the end of the file read as zero without large allocations', async () => {
  // A 32 MiB L1 table declared, the file is 4 clusters long.
  const h = baseHeader({ l1Size: 0x400000, size: 2 ** 45 });
  const d = await openQcow2(ctxFor(buildImage(h)));
  const m = await d.getMapping(2 ** 44, 2 ** 44);
  assert.deepEqual(m, { kind: 'unallocated', length: 2 ** 44 });
});

test('virtual size rounds down to whole sectors', async () => {
  const d = await openQcow2(ctxFor(buildImage(baseHeader({ size: 1000 }))));
  assert.equal(d.size, 512);
});
