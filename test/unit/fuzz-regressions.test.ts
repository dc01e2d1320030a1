/**
 * Bugs the fuzzer found, one test each: the seed image is rebuilt with
 * qemu-img, the mutation that found the bug is applied as plain byte edits,
 * and the operation that failed must now end in an ImageError (or succeed)
 * within a few seconds.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Image } from '../../src/block/image.js';
import { openImage } from '../../src/block/open.js';
import { ImageError } from '../../src/errors.js';
import { applyEdits, type Edit } from '../fuzz/mutate.js';
import { haveQemu, makeSeedNamed, type Seed } from '../fuzz/seeds.js';
import { MemoryStorage } from '../../src/io/memory.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';
import { FUZZ_PASSPHRASE } from '../fuzz/luks-seed.js';
import { isAcceptable, memoryHost, runTarget, type TargetName } from '../fuzz/targets.js';

const qemu = haveQemu();
if (!qemu && process.env.CI) throw new Error('qemu-img/qemu-io are required when CI is set');

const seeds = new Map<string, Seed>();
function seed(name: string): Seed {
  let s = seeds.get(name);
  if (!s) seeds.set(name, (s = makeSeedNamed(name)));
  return s;
}

const u64be = (at: number, v: bigint, why = ''): Edit => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return { at, hex: b.toString('hex'), why };
};
const bytesAt = (at: number, hex: string, why = ''): Edit => ({ at, hex, why });
const truncate = (length: number, why = ''): Edit => ({ truncate: length, why });

/** The image of `seedName` after `edits`, opened from memory with the files it names. */
async function open(seedName: string, edits: Edit[], opts: { writable?: boolean; opened?: (s: MemoryStorage) => void } = {}): Promise<Image> {
  const s = seed(seedName);
  const files = new Map<string, Uint8Array>(Object.entries(s.sidecars));
  files.set(s.file, applyEdits(s.bytes, edits));
  const host = memoryHost(files, (path, storage) => {
    if (path === s.file) opts.opened?.(storage);
  });
  return openImage(s.file, { host, format: s.format, writable: opts.writable, passphrase: FUZZ_PASSPHRASE });
}

/** Run a fuzz target on the mutated seed: it must end cleanly in time. */
async function target(name: TargetName, seedName: string, edits: Edit[], caseSeed = 1): Promise<void> {
  const s = seed(seedName);
  const r = await runTarget(name, { file: s.file, format: s.format, bytes: applyEdits(s.bytes, edits), sidecars: s.sidecars, caseSeed }, 10_000);
  assert.equal(r.finding, undefined, `${name}: ${r.error?.name}: ${r.error?.message}\n${r.error?.stack ?? ''}`);
}

/** `f` must fail with an ImageError of one of `codes` (or succeed when codes is empty and it does). */
async function rejectsWith(f: () => Promise<unknown>, ...codes: string[]): Promise<void> {
  await assert.rejects(f, (e: unknown) => {
    assert.ok(isAcceptable(e), `not an ImageError: ${String(e)}`);
    if (codes.length > 0) assert.ok(codes.includes((e as ImageError).code), `code ${(e as ImageError).code}`);
    return true;
  });
}

const opts = { skip: !qemu && 'qemu-img/qemu-io not installed' };

test('compressed write with cluster 0 free in the refcounts is refused, not an endless allocation loop', opts, async () => {
  // qcow2-zlib (64 KiB clusters): cut after the refcount table, so the refcount block reads as zeros
  // and every cluster, the header included, looks free.
  const img = await open('qcow2-zlib', [truncate(131072, 'file length 131072 (was 458752)')], { writable: true });
  try {
    await rejectsWith(() => img.write(1638400, new Uint8Array(65536).fill(0xa5), { compressed: true }), 'corrupt');
  } finally {
    await img.close().catch(() => {});
  }
});

/** Host offset of the LUKS header a qcow2 image names (crypto header extension). */
function luksOffset(bytes: Uint8Array): number {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let e = v.getUint32(100); v.getUint32(e) !== 0; e += 8 + ((v.getUint32(e + 4) + 7) & ~7)) {
    if (v.getUint32(e) === 0x0537be77) return Number(v.getBigUint64(e + 8));
  }
  throw new Error('no crypto header extension');
}

for (const word of ['constructor', '__proto__', 'toString']) {
  test(`LUKS cipher name '${word}' is an unsupported cipher, not a TypeError`, opts, async () => {
    const s = seed('qcow2-luks');
    const name = Buffer.alloc(32);
    name.write(word);
    const edits = [bytesAt(luksOffset(s.bytes) + 8, name.toString('hex'), `LUKS cipher-name = '${word}'`)];
    // Opened with its passphrase (as the fuzzer opens it), the header's names are checked before any key derivation.
    await rejectsWith(() => open('qcow2-luks', edits), 'unsupported');
    await target('info', 'qcow2-luks', edits);
  });
}

const be32 = (at: number, v: number, why: string): Edit => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return { at, hex: b.toString('hex'), why };
};

test('a raw LUKS seed opens with the fuzz passphrase; hostile slot fields end in ImageErrors, quickly', opts, async () => {
  const img = await open('luks', []);
  const buf = new Uint8Array(512);
  await img.read(0, buf);
  await img.close();
  assert.ok(buf.every((b) => b === 0xd0), 'the seed decrypts to its pattern');
  const cases: Array<[Edit[], string]> = [
    [[be32(212, 0xffffffff, 'slot 0 iterations 2^32-1')], 'unsupported'],
    [[be32(212, 1 << 26, 'slot 0 iterations at the library cap')], 'unsupported'],
    [[be32(164, 0xffffffff, 'digest iterations 2^32-1')], 'unsupported'],
    [[be32(252, 0, 'slot 0 stripes 0')], 'invalid'],
    [[be32(248, 0xffffff00, 'slot 0 key material far past the end')], 'invalid'],
    [[be32(104, 0xffffffff, 'payload offset past the end')], 'invalid'],
    [[be32(108, 0xffffffff, 'key bytes 2^32-1')], 'unsupported'],
  ];
  for (const [edits, code] of cases) {
    const t0 = performance.now();
    await rejectsWith(() => open('luks', edits), code);
    for (const name of ['read', 'convert', 'write'] as const) await target(name, 'luks', edits);
    assert.ok(performance.now() - t0 < 5000, `${edits[0]!.why} took ${performance.now() - t0} ms`);
  }
});

test('an allocation scan over a hostile refcount table keeps the refcount block cache bounded', opts, async () => {
  // qcow2-zstd-refcount64: 4 KiB clusters, 64-bit refcounts (512 per block). A new refcount table
  // of 3000 entries all naming one block of 0xff (every cluster in use): a first-fit allocation walks
  // 3000 blocks, and each used to stay cached (with a million entries, gigabytes).
  const s = seed('qcow2-zstd-refcount64');
  const cs = 4096;
  const full = Math.ceil(s.bytes.length / cs) * cs;
  const entries = 3000;
  const table = Buffer.alloc(Math.ceil((entries * 8) / cs) * cs);
  for (let i = 0; i < entries; i++) table.writeBigUInt64BE(BigInt(full), i * 8);
  const edits = [
    bytesAt(full, Buffer.alloc(cs, 0xff).toString('hex'), 'a refcount block with every count nonzero'),
    bytesAt(full + cs, table.toString('hex'), 'a refcount table naming it 3000 times'),
    u64be(48, BigInt(full + cs), 'refcount_table_offset'),
    bytesAt(56, (table.length / cs).toString(16).padStart(8, '0'), 'refcount_table_clusters'),
  ];
  const img = await open('qcow2-zstd-refcount64', edits, { writable: true });
  try {
    await img.write(1536 * 1024, new Uint8Array(4096).fill(1)).catch((e: unknown) => assert.ok(isAcceptable(e), String(e)));
    // The store's cache is private; its size is the property under test.
    const store = (img.driver as unknown as { parts: { refcountStore: { blocks: Map<number, Uint8Array> } } }).parts.refcountStore;
    assert.ok(store.blocks.size <= (8 * 1024 * 1024) / cs, `${store.blocks.size} refcount blocks cached`);
  } finally {
    await img.close().catch(() => {});
  }
});

test('a header rewrite keeps a backing format name that is not UTF-8 byte for byte', opts, async () => {
  // qcow2-bitmap: the first write clears the bitmaps autoclear bit and so rewrites the header. A backing
  // format extension of 15 bytes that are not UTF-8 came back as 22 (U+FFFD each), which no reader accepts.
  const ext = 'e2792aca0000000f6c05998a641bebe8370f4286000217';
  let storage: MemoryStorage | undefined;
  const img = await open('qcow2-bitmap', [bytesAt(144, ext, 'new extension 0xe2792aca len 15 at 144')], {
    writable: true,
    opened: (s) => (storage = s),
  });
  await img.write(0, new Uint8Array(512).fill(1));
  await img.close();
  const after = storage!.bytes();
  const stored = Buffer.from(after).toString('hex');
  assert.ok(stored.includes('e2792aca0000000c6c05998a641bebe8370f4286'), 'the name (up to its NUL) is written back as it was');
  const r = await checkQcow2(new MemoryStorage(after), { fix: 'none' });
  assert.equal(r.failed, undefined);
  assert.equal(r.corruptions, 0);
});
