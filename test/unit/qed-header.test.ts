/**
 * QED header validation: messages and error codes as QEMU 7.2 gives them.
 * In-memory headers cover every rule; poked qemu-made images tie the
 * expected texts to qemu-img itself.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, writeSync, closeSync, truncateSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import type { DriverContext } from '../../src/block/driver.js';
import type { Codecs } from '../../src/block/codecs.js';
import { isImageError } from '../../src/errors.js';
import { openQed, QedDriver } from '../../src/formats/qed/qed.js';
import { maxImageSize } from '../../src/formats/qed/header.js';
import { openImageFile } from '../../src/node.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

interface Fields {
  magic?: number;
  clusterSize?: number;
  tableSize?: number;
  headerSize?: number;
  features?: bigint;
  compat?: bigint;
  autoclear?: bigint;
  l1?: bigint;
  imageSize?: bigint;
  backingOffset?: number;
  backingSize?: number;
}

/** A header as qemu-img create writes it by default (64K clusters, 4-cluster tables, 1 GiB). */
function headerBytes(f: Fields = {}): Uint8Array {
  const b = new Uint8Array(64);
  const v = new DataView(b.buffer);
  v.setUint32(0, f.magic ?? 0x00444551, true);
  v.setUint32(4, f.clusterSize ?? 64 * KiB, true);
  v.setUint32(8, f.tableSize ?? 4, true);
  v.setUint32(12, f.headerSize ?? 1, true);
  v.setBigUint64(16, f.features ?? 0n, true);
  v.setBigUint64(24, f.compat ?? 0n, true);
  v.setBigUint64(32, f.autoclear ?? 0n, true);
  v.setBigUint64(40, f.l1 ?? 64n * 1024n, true);
  v.setBigUint64(48, f.imageSize ?? BigInt(GiB), true);
  v.setUint32(56, f.backingOffset ?? 0, true);
  v.setUint32(60, f.backingSize ?? 0, true);
  return b;
}

/** Storage of `size` bytes holding `head` at 0 and anything in `extra`; the rest reads as zero. */
class SparseStorage implements Storage {
  readonly name = 'sparse';
  readonly writable = false;
  private readonly parts: Array<[number, Uint8Array]>;
  constructor(private readonly length: number, parts: Array<[number, Uint8Array]>) {
    this.parts = parts;
  }
  async size(): Promise<number> {
    return this.length;
  }
  async read(into: Uint8Array, offset: number): Promise<void> {
    into.fill(0);
    for (const [at, bytes] of this.parts) {
      const s = Math.max(at, offset);
      const e = Math.min(at + bytes.length, offset + into.length);
      if (s < e) into.set(bytes.subarray(s - at, e - at), s - offset);
    }
  }
  async write(): Promise<void> {
    throw new Error('read-only');
  }
  async truncate(): Promise<void> {}
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

function ctx(storage: Storage): DriverContext {
  return {
    storage,
    writable: false,
    codecs: {} as Codecs,
    metadataOnly: false,
    openDataFile: async () => {
      throw new Error('no data files');
    },
  };
}

async function open(f: Fields, fileSize = 327680, extra: Array<[number, Uint8Array]> = []): Promise<QedDriver> {
  const d = await openQed(ctx(new SparseStorage(fileSize, [[0, headerBytes(f)], ...extra])));
  assert.ok(d instanceof QedDriver);
  return d;
}

async function refused(f: Fields, message: string, code: string, fileSize = 327680, extra: Array<[number, Uint8Array]> = []): Promise<void> {
  await assert.rejects(open(f, fileSize, extra), (e: unknown) => {
    assert.ok(isImageError(e), `not an ImageError: ${String(e)}`);
    assert.equal(e.message, message);
    assert.equal(e.code, code);
    return true;
  });
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

test('the default qemu-img header opens', async () => {
  const d = await open({});
  assert.equal(d.size, GiB);
  assert.equal(d.geometry.clusterSize, 64 * KiB);
  assert.equal(d.backing, undefined);
  assert.deepEqual(await d.info(), { clusterSize: 64 * KiB, dirty: false });
});

test('magic', async () => {
  await refused({ magic: 0x12345678 }, 'Image not in QED format', 'invalid');
  // A file too short for a header reads as zeros past its end.
  await assert.rejects(openQed(ctx(new MemoryStorage(new Uint8Array([0x51, 0x45, 0x44, 0])))), /QED cluster size is invalid/);
});

test('unknown feature bits', async () => {
  await refused({ features: 0x10n }, 'Unsupported QED features: 10', 'unsupported');
  await refused({ features: 0x18n }, 'Unsupported QED features: 18', 'unsupported');
  await refused({ features: 0x8000000000000007n }, 'Unsupported QED features: 8000000000000000', 'unsupported');
  // Features are checked before anything else.
  await refused({ features: 0x20n, clusterSize: 3 }, 'Unsupported QED features: 20', 'unsupported');
  // Unknown compat and autoclear bits do not stop a read.
  await open({ compat: 0xffn, autoclear: 0xffn });
});

test('cluster size', async () => {
  for (const cs of [0, 1000, 2048, 3 * 4096, 128 * MiB, 0x80000000]) {
    await refused({ clusterSize: cs }, 'QED cluster size is invalid', 'invalid');
  }
  await open({ clusterSize: 4096, l1: 4096n, imageSize: 1n << 30n }, 5 * 4096);
});

test('table size', async () => {
  for (const ts of [0, 3, 5, 32, 0xffffffff]) await refused({ tableSize: ts }, 'QED table size is invalid', 'invalid');
  for (const ts of [1, 2, 8, 16]) await open({ tableSize: ts }, 64 * KiB * (1 + ts));
});

test('image size', async () => {
  await refused({ imageSize: 1000n }, 'QED image size is invalid', 'invalid');
  // 64K clusters, 4-cluster tables: 32768 entries, at most 2^46 bytes.
  assert.equal(maxImageSize(64 * KiB, 4), 1n << 46n);
  await open({ imageSize: 1n << 46n });
  await open({ imageSize: 0n });
  await refused({ imageSize: (1n << 46n) + 512n }, 'QED image size is invalid', 'invalid');
  // QEMU computes the limit in u64; for 64 MiB clusters it wraps to 0.
  assert.equal(maxImageSize(64 * MiB, 1), 0n);
  await refused({ clusterSize: 64 * MiB, tableSize: 1, imageSize: 512n }, 'QED image size is invalid', 'invalid');
  // Valid QED, but past 2^53: refused as unsupported rather than rounded.
  await assert.rejects(open({ clusterSize: MiB, tableSize: 16, l1: BigInt(MiB), imageSize: 1n << 60n }, 17 * MiB), (e: unknown) =>
    isImageError(e, 'unsupported'),
  );
});

test('L1 table offset', async () => {
  const bad = 'QED table offset is invalid';
  await refused({ l1: 1000n }, bad, 'invalid');
  await refused({ l1: 0n }, bad, 'invalid'); // inside the header cluster
  await refused({ l1: 0x20000n }, bad, 'invalid'); // the table would run past the end of the file
  await refused({ l1: 0x50000n }, bad, 'invalid');
  await refused({ l1: 1n << 60n }, bad, 'invalid');
  await refused({ l1: 0xffffffffffff0000n }, bad, 'invalid');
  // QEMU counts the file in whole sectors, then whole clusters.
  await open({}, 327679);
  await refused({}, bad, 'invalid', 0x41000);
  await refused({}, bad, 'invalid', 0x40000);
  // A larger header area moves the lower bound.
  await refused({ headerSize: 2, l1: 0x10000n }, bad, 'invalid', 0x70000);
  await open({ headerSize: 2, l1: 0x20000n }, 0x70000);
});

test('table_size 1 opens (the spec allows it; QEMU 7.2 refuses every 1-cluster table)', async () => {
  const d = await open({ clusterSize: 4096, tableSize: 1, l1: 4096n, imageSize: 1n << 30n }, 8192);
  assert.equal(d.geometry.tableEntries, 512);
});

test('header size', async () => {
  await open({ headerSize: 0xffff, l1: 0xffff0000n }, 0x100000000 + 0x40000);
  // Checked after the L1 offset, as QEMU does.
  await refused({ headerSize: 0x10000 }, 'QED table offset is invalid', 'invalid');
  await refused({ headerSize: 0x10000, l1: 0x100000000n, imageSize: 1n << 46n }, 'QED header size is too large', 'invalid', 5 * GiB);
});

test('backing file name', async () => {
  const name = text('base.raw');
  let d = await open({ features: 1n, backingOffset: 64, backingSize: 8 }, 327680, [[64, name]]);
  assert.deepEqual(d.backing, { name: 'base.raw' });
  d = await open({ features: 5n, backingOffset: 64, backingSize: 8 }, 327680, [[64, name]]);
  assert.deepEqual(d.backing, { name: 'base.raw', format: 'raw' });
  // NO_PROBE alone names nothing.
  d = await open({ features: 4n, backingOffset: 64, backingSize: 8 }, 327680, [[64, name]]);
  assert.equal(d.backing, undefined);
  // The name ends at a NUL; an empty one means no backing file.
  d = await open({ features: 1n, backingOffset: 64, backingSize: 8 }, 327680, [[64, text('ba\0e.raw')]]);
  assert.deepEqual(d.backing, { name: 'ba' });
  d = await open({ features: 1n, backingOffset: 64, backingSize: 0 });
  assert.equal(d.backing, undefined);
  await open({ features: 1n, backingOffset: 65530, backingSize: 6 });
  await refused({ features: 1n, backingOffset: 65530, backingSize: 7 }, 'QED backing filename offset is invalid', 'invalid');
  await refused({ features: 1n, backingOffset: 0xffffffff, backingSize: 2 }, 'QED backing filename offset is invalid', 'invalid');
  await open({ features: 1n, backingOffset: 64, backingSize: 4095 });
  await refused({ features: 1n, backingOffset: 64, backingSize: 4096 }, 'Failed to read backing filename', 'invalid');
  // Without the feature bit the fields are ignored.
  await open({ backingOffset: 0xffffffff, backingSize: 0xffffffff });
});

test('NEED_CHECK: a read-only open proceeds', async () => {
  const d = await open({ features: 2n });
  assert.equal(d.needsCheck, true);
  assert.deepEqual(await d.info(), { clusterSize: 64 * KiB, dirty: false });
});

// ---- The same rules against qemu-img 7.2 ----

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'qimg-qed-header-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function needQemu(t: { skip(msg?: string): void }): boolean {
  if (haveQemu) return true;
  if (process.env.CI) assert.fail('qemu-img is required when CI is set');
  t.skip('qemu-img not installed');
  return false;
}

function poke(path: string, at: number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, bytes, 0, bytes.length, at);
  closeSync(fd);
}
const u32 = (v: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
};
const u64 = (v: bigint): Uint8Array => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
};

interface Poke {
  what: string;
  pokes: Array<[number, Uint8Array]>;
  size?: number;
}

const cases: Poke[] = [
  { what: 'unknown feature', pokes: [[16, u64(0x18n)]] },
  { what: 'high feature bit', pokes: [[16, u64(0x8000000000000000n)]] },
  { what: 'cluster size 1000', pokes: [[4, u32(1000)]] },
  { what: 'cluster size 128M', pokes: [[4, u32(0x8000000)]] },
  { what: 'table size 3', pokes: [[8, u32(3)]] },
  { what: 'table size 32', pokes: [[8, u32(32)]] },
  { what: 'image size 1000', pokes: [[48, u64(1000n)]] },
  { what: 'image size at max', pokes: [[48, u64(1n << 46n)]] },
  { what: 'image size past max', pokes: [[48, u64((1n << 46n) + 512n)]] },
  { what: 'L1 unaligned', pokes: [[40, u64(1000n)]] },
  { what: 'L1 in header', pokes: [[40, u64(0n)]] },
  { what: 'L1 runs past EOF', pokes: [[40, u64(0x20000n)]] },
  { what: 'truncated file', pokes: [], size: 0x41000 },
  { what: 'file short of a whole sector', pokes: [], size: 327679 },
  { what: 'header size 0x10000', pokes: [[12, u32(0x10000)]] },
  { what: 'header size too large', pokes: [[12, u32(0x10000)], [40, u64(0x100000000n)], [48, u64(1n << 46n)]], size: 5 * GiB },
  { what: 'backing name at the end of the header', pokes: [[16, u64(1n)], [56, u32(65530)], [60, u32(6)]] },
  { what: 'backing name past the header', pokes: [[16, u64(1n)], [56, u32(65530)], [60, u32(7)]] },
  { what: 'backing name too long', pokes: [[16, u64(1n)], [56, u32(64)], [60, u32(4096)]] },
  { what: 'backing name offset wraps', pokes: [[16, u64(1n)], [56, u32(0xffffffff)], [60, u32(2)]] },
  { what: 'NEED_CHECK', pokes: [[16, u64(2n)]] },
];

test('messages equal qemu-img info on poked images', async (t) => {
  if (!needQemu(t)) return;
  const base = join(dir, 'base.qed');
  assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qed', base, '1G']).status, 0);
  for (const [i, c] of cases.entries()) {
    const path = join(dir, `p${i}.qed`);
    copyFileSync(base, path);
    for (const [at, bytes] of c.pokes) poke(path, at, bytes);
    if (c.size !== undefined) truncateSync(path, c.size);
    const q = spawnSync('qemu-img', ['info', '-f', 'qed', '--output=json', path], { encoding: 'utf8' });
    const prefix = `qemu-img: Could not open '${path}': `;
    const expected = q.status === 0 ? undefined : q.stderr.trim().slice(prefix.length);
    let got: string | undefined;
    try {
      const img = await openImageFile(path, { format: 'qed', metadataOnly: true, backing: false });
      const info = await img.info();
      await img.close();
      if (q.status === 0) {
        const qi = JSON.parse(q.stdout) as Record<string, unknown>;
        assert.equal(info['virtual-size'], qi['virtual-size'], c.what);
        assert.equal(info['dirty-flag'], qi['dirty-flag'], c.what);
        assert.equal(info['cluster-size'], qi['cluster-size'], c.what);
      }
    } catch (e) {
      if (!isImageError(e)) throw e;
      got = e.message;
    }
    assert.equal(got, expected, c.what);
  }
});
