/**
 * Structure-aware mutations of seed images. Each seed is parsed once into a
 * layout (where every header field, extension, table entry, refcount block,
 * compressed payload, snapshot and bitmap entry lives); a mutation picks a
 * structure and writes a hostile value into it. Every mutation is recorded
 * as plain byte edits, so a finding replays (and minimises) without the
 * random generator.
 */
import type { Seed } from './seeds.js';

/** One low-level change: bytes written at an offset, or the file cut/extended to a length. */
export type Edit = { at: number; hex: string; why: string } | { truncate: number; why: string };

/** Small, fast, seedable generator (mulberry32). */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  bool(p = 0.5): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    if (xs.length === 0) throw new Error('pick from an empty list');
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** A 32-bit hash for deriving per-case seeds. */
export function mix(a: number, b: number): number {
  let h = (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x7f4a7c15, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x45d9f3b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

interface Field {
  name: string;
  at: number;
  size: 1 | 2 | 4 | 8;
  kind: 'offset' | 'count' | 'bits' | 'enum' | 'size';
  /** Values with a meaning for this field. */
  special?: bigint[];
}

interface Extension {
  at: number;
  magic: number;
  len: number;
}

/** Where things are in one seed image. */
export interface Layout {
  format: Seed['format'];
  le: boolean;
  fileSize: number;
  clusterSize: number;
  header: Field[];
  extensions: Extension[];
  /** End-of-extensions marker (where a new extension may be added). */
  extEnd: number;
  /** Offsets of 8-byte table entries, grouped by what they are. */
  l1: number[];
  l2: number[];
  l2Compressed: number[];
  /** Extended L2 bitmaps (the second 8 bytes of an entry). */
  l2Bitmaps: number[];
  reftable: number[];
  refblocks: Array<{ at: number; size: number }>;
  compressed: Array<{ at: number; size: number }>;
  snapshots: Field[];
  snapshotL1: number[];
  bitmapDir: Field[];
  bitmapTables: number[];
  luks: { at: number; size: number } | undefined;
  /** Offsets of clusters holding metadata: targets for overlapping pointers. */
  metadata: number[];
  l2Bits: number;
  refcountBits: number;
  extL2: boolean;
}

const u64 = (b: Uint8Array, at: number, le: boolean): bigint => (at + 8 <= b.length ? new DataView(b.buffer, b.byteOffset).getBigUint64(at, le) : 0n);
const u32 = (b: Uint8Array, at: number, le: boolean): number => (at + 4 <= b.length ? new DataView(b.buffer, b.byteOffset).getUint32(at, le) : 0);
const u16 = (b: Uint8Array, at: number, le: boolean): number => (at + 2 <= b.length ? new DataView(b.buffer, b.byteOffset).getUint16(at, le) : 0);

const QCOW2_OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;

export function analyse(seed: Seed): Layout {
  const b = seed.bytes;
  const base: Layout = {
    format: seed.format,
    le: seed.format === 'qed',
    fileSize: b.length,
    clusterSize: 512,
    header: [],
    extensions: [],
    extEnd: 0,
    l1: [],
    l2: [],
    l2Compressed: [],
    l2Bitmaps: [],
    reftable: [],
    refblocks: [],
    compressed: [],
    snapshots: [],
    snapshotL1: [],
    bitmapDir: [],
    bitmapTables: [],
    luks: undefined,
    metadata: [0],
    l2Bits: 0,
    refcountBits: 16,
    extL2: false,
  };
  if (seed.format === 'qcow2') return analyseQcow2(b, base);
  if (seed.format === 'qed') return analyseQed(b, base);
  if (seed.format === 'luks') return { ...base, luks: { at: 0, size: 592 } };
  return base;
}

function analyseQcow2(b: Uint8Array, L: Layout): Layout {
  const version = u32(b, 4, false);
  const cb = u32(b, 20, false);
  const cs = 2 ** cb;
  L.clusterSize = cs;
  const F = (name: string, at: number, size: Field['size'], kind: Field['kind'], special?: bigint[]): Field => ({ name, at, size, kind, special });
  L.header.push(
    F('magic', 0, 4, 'enum', [0n, 0x514649fan, 0x00444551n]),
    F('version', 4, 4, 'enum', [0n, 1n, 2n, 3n, 4n]),
    F('backing_file_offset', 8, 8, 'offset', [0n, 72n, 104n, 112n, BigInt(cs - 1), BigInt(cs), BigInt(cs + 1)]),
    F('backing_file_size', 16, 4, 'count', [0n, 1n, 1023n, 1024n, BigInt(cs)]),
    F('cluster_bits', 20, 4, 'enum', [8n, 9n, 10n, 12n, 16n, 20n, 21n, 22n, 31n, 32n, 63n]),
    F('size', 24, 8, 'size'),
    F('crypt_method', 32, 4, 'enum', [0n, 1n, 2n, 3n]),
    F('l1_size', 36, 4, 'count'),
    F('l1_table_offset', 40, 8, 'offset'),
    F('refcount_table_offset', 48, 8, 'offset'),
    F('refcount_table_clusters', 56, 4, 'count'),
    F('nb_snapshots', 60, 4, 'count', [65536n, 65537n]),
    F('snapshots_offset', 64, 8, 'offset'),
  );
  if (version === 3) {
    L.header.push(
      F('incompatible_features', 72, 8, 'bits'),
      F('compatible_features', 80, 8, 'bits'),
      F('autoclear_features', 88, 8, 'bits'),
      F('refcount_order', 96, 4, 'enum', [0n, 1n, 3n, 4n, 5n, 6n, 7n]),
      F('header_length', 100, 4, 'enum', [0n, 72n, 100n, 103n, 104n, 105n, 108n, 112n, 120n, BigInt(cs), BigInt(cs + 8)]),
      F('compression_type', 104, 1, 'enum', [0n, 1n, 2n, 255n]),
    );
    L.refcountBits = 2 ** u32(b, 96, false);
  }
  const incompat = version === 3 ? u64(b, 72, false) : 0n;
  L.extL2 = (incompat & 0x10n) !== 0n;
  const entry = L.extL2 ? 16 : 8;
  L.l2Bits = cb - Math.log2(entry);

  // Header extensions.
  const bfo = Number(u64(b, 8, false));
  const extLimit = bfo !== 0 ? bfo : cs;
  let e = version === 3 ? u32(b, 100, false) : 72;
  while (e + 8 <= extLimit) {
    const magic = u32(b, e, false);
    const len = u32(b, e + 4, false);
    if (magic === 0) break;
    L.extensions.push({ at: e, magic, len });
    if (magic === 0x0537be77 && len === 16) {
      const off = Number(u64(b, e + 8, false));
      L.luks = { at: off, size: 592 };
      L.metadata.push(off);
    }
    if (magic === 0x23852875 && len === 24) analyseBitmaps(b, L, Number(u64(b, e + 24, false)), Number(u64(b, e + 16, false)));
    e += 8 + ((len + 7) & ~7);
  }
  L.extEnd = e;

  const isMeta = (off: number): boolean => off > 0 && off + cs <= b.length;
  // Refcount table and blocks.
  const rto = Number(u64(b, 48, false));
  const rtc = u32(b, 56, false);
  L.metadata.push(rto);
  for (let i = 0; i < (rtc * cs) / 8 && rto + i * 8 + 8 <= b.length; i++) {
    const v = Number(u64(b, rto + i * 8, false) & ~0x1ffn);
    if (v !== 0 || i < 2) L.reftable.push(rto + i * 8);
    if (isMeta(v)) {
      L.refblocks.push({ at: v, size: cs });
      L.metadata.push(v);
    }
  }
  // Active L1, then the L2 tables of every L1 (active and snapshots).
  const l2Tables = new Set<number>();
  const walkL1 = (off: number, n: number, into: number[]): void => {
    for (let i = 0; i < n && off + i * 8 + 8 <= b.length; i++) {
      const v = u64(b, off + i * 8, false);
      into.push(off + i * 8);
      const t = Number(v & QCOW2_OFFSET_MASK);
      if (isMeta(t)) l2Tables.add(t);
    }
  };
  const l1o = Number(u64(b, 40, false));
  const l1n = u32(b, 36, false);
  L.metadata.push(l1o);
  walkL1(l1o, Math.min(l1n, 4096), L.l1);

  // Snapshot table.
  const nb = u32(b, 60, false);
  let p = Number(u64(b, 64, false));
  if (nb > 0) L.metadata.push(p);
  for (let i = 0; i < nb && p + 40 <= b.length; i++) {
    L.snapshots.push(
      F(`snapshot[${i}].l1_table_offset`, p, 8, 'offset'),
      F(`snapshot[${i}].l1_size`, p + 8, 4, 'count'),
      F(`snapshot[${i}].id_size`, p + 12, 2, 'count'),
      F(`snapshot[${i}].name_size`, p + 14, 2, 'count'),
      F(`snapshot[${i}].vm_state_size`, p + 32, 4, 'size'),
      F(`snapshot[${i}].extra_data_size`, p + 36, 4, 'count', [0n, 8n, 16n, 24n, 1024n, 1025n]),
    );
    const extra = u32(b, p + 36, false);
    if (extra >= 16) L.snapshots.push(F(`snapshot[${i}].disk_size`, p + 48, 8, 'size'));
    const so = Number(u64(b, p, false));
    L.metadata.push(so);
    walkL1(so, Math.min(u32(b, p + 8, false), 4096), L.snapshotL1);
    p += 40 + extra + u16(b, p + 12, false) + u16(b, p + 14, false);
    p = (p + 7) & ~7;
  }

  const cbits = cb - 8;
  const shift = 62n - BigInt(cbits);
  for (const t of [...l2Tables].sort((x, y) => x - y)) {
    L.metadata.push(t);
    for (let i = 0; i < cs / entry; i++) {
      const at = t + i * entry;
      const v = u64(b, at, false);
      if (v === 0n && (i % 97 !== 0 || L.l2.length > 4096)) continue;
      if (v & (1n << 62n)) {
        L.l2Compressed.push(at);
        const host = Number(v & ((1n << shift) - 1n));
        const sectors = Number((v >> shift) & ((1n << BigInt(cbits)) - 1n)) + 1;
        const size = Math.min(sectors * 512 - (host % 512), b.length - host);
        if (size > 0) L.compressed.push({ at: host, size });
      } else L.l2.push(at);
      if (L.extL2) L.l2Bitmaps.push(at + 8);
    }
  }
  return L;
}

function analyseBitmaps(b: Uint8Array, L: Layout, dirOffset: number, dirSize: number): void {
  const F = (name: string, at: number, size: Field['size'], kind: Field['kind'], special?: bigint[]): Field => ({ name, at, size, kind, special });
  L.metadata.push(dirOffset);
  let p = dirOffset;
  let i = 0;
  while (p + 24 <= dirOffset + dirSize && p + 24 <= b.length) {
    L.bitmapDir.push(
      F(`bitmap[${i}].table_offset`, p, 8, 'offset'),
      F(`bitmap[${i}].table_size`, p + 8, 4, 'count'),
      F(`bitmap[${i}].flags`, p + 12, 4, 'bits'),
      F(`bitmap[${i}].type`, p + 16, 1, 'enum', [0n, 1n, 2n, 255n]),
      F(`bitmap[${i}].granularity_bits`, p + 17, 1, 'enum', [0n, 8n, 9n, 16n, 31n, 32n, 63n, 255n]),
      F(`bitmap[${i}].name_size`, p + 18, 2, 'count', [0n, 1023n, 1024n, 0xffffn]),
      F(`bitmap[${i}].extra_data_size`, p + 20, 4, 'count'),
    );
    const to = Number(u64(b, p, false));
    const ts = u32(b, p + 8, false);
    L.metadata.push(to);
    for (let k = 0; k < Math.min(ts, 64); k++) L.bitmapTables.push(to + k * 8);
    const next = 24 + u32(b, p + 20, false) + u16(b, p + 18, false);
    p += (next + 7) & ~7;
    i++;
  }
}

function analyseQed(b: Uint8Array, L: Layout): Layout {
  const cs = u32(b, 4, true);
  const ts = u32(b, 8, true);
  L.clusterSize = cs;
  const F = (name: string, at: number, size: Field['size'], kind: Field['kind'], special?: bigint[]): Field => ({ name, at, size, kind, special });
  L.header.push(
    F('magic', 0, 4, 'enum', [0n, 0x00444550n, 0x514649fbn]),
    F('cluster_size', 4, 4, 'enum', [0n, 512n, 1000n, 2048n, 4096n, 65536n, 1n << 26n, 1n << 27n, 0x80000000n]),
    F('table_size', 8, 4, 'enum', [0n, 1n, 2n, 3n, 4n, 16n, 17n, 32n]),
    F('header_size', 12, 4, 'count', [0n, 1n, 2n, 0x10000n]),
    F('features', 16, 8, 'bits'),
    F('compat_features', 24, 8, 'bits'),
    F('autoclear_features', 32, 8, 'bits'),
    F('l1_table_offset', 40, 8, 'offset'),
    F('image_size', 48, 8, 'size'),
    F('backing_filename_offset', 56, 4, 'offset', [0n, 64n, BigInt(cs - 1), BigInt(cs)]),
    F('backing_filename_size', 60, 4, 'count', [0n, 4095n, 4096n]),
  );
  const l1o = Number(u64(b, 40, true));
  L.metadata.push(l1o);
  const entries = (ts * cs) / 8;
  const l2s: number[] = [];
  for (let i = 0; i < entries && l1o + i * 8 + 8 <= b.length; i++) {
    const v = Number(u64(b, l1o + i * 8, true));
    if (v !== 0 || i < 4) L.l1.push(l1o + i * 8);
    if (v > 0 && v + ts * cs <= b.length) l2s.push(v);
  }
  for (const t of l2s) {
    L.metadata.push(t);
    for (let i = 0; i < entries && L.l2.length < 8192; i++) {
      const v = u64(b, t + i * 8, true);
      if (v !== 0n || i % 101 === 0) L.l2.push(t + i * 8);
    }
  }
  return L;
}

// --- mutation ---

const TWO = (n: number): bigint => 1n << BigInt(n);
const MASK64 = TWO(64) - 1n;

function encode(v: bigint, size: number, le: boolean): Uint8Array {
  const out = new Uint8Array(size);
  let x = v & (TWO(size * 8) - 1n);
  for (let i = 0; i < size; i++) {
    const byte = Number(x & 0xffn);
    out[le ? i : size - 1 - i] = byte;
    x >>= 8n;
  }
  return out;
}

function read(b: Uint8Array, at: number, size: number, le: boolean): bigint {
  let v = 0n;
  for (let i = 0; i < size; i++) {
    const byte = BigInt(b[at + (le ? size - 1 - i : i)] ?? 0);
    v = (v << 8n) | byte;
  }
  return v;
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** Offsets a hostile pointer may name. */
function offsetValues(L: Layout, rng: Rng): bigint[] {
  const cs = BigInt(L.clusterSize);
  const fs = BigInt(L.fileSize);
  const alignedEnd = ((fs + cs - 1n) / cs) * cs;
  const meta = L.metadata.length > 0 ? BigInt(rng.pick(L.metadata)) : 0n;
  return [
    0n,
    1n,
    0x200n,
    cs - 1n,
    cs,
    cs + 0x200n,
    meta,
    meta + 0x200n,
    fs,
    alignedEnd,
    alignedEnd - cs,
    alignedEnd + cs,
    alignedEnd + cs * 1000n,
    TWO(31),
    TWO(32),
    TWO(32) - cs,
    TWO(40),
    TWO(53) - cs,
    TWO(53),
    TWO(55) - cs,
    TWO(56),
    TWO(62),
    TWO(63),
    TWO(63) - cs,
    MASK64,
    BigInt(rng.int(Math.max(1, L.fileSize / L.clusterSize))) * cs,
  ];
}

function countValues(cur: bigint, rng: Rng): bigint[] {
  return [
    0n,
    1n,
    2n,
    cur + 1n,
    cur - 1n,
    cur * 2n,
    cur * 16n,
    cur + 0x1000n,
    0x7fn,
    0xffn,
    0x100n,
    0xffffn,
    0x10000n,
    0x1000000n,
    0x2000000n,
    0x2000001n,
    0x7fffffffn,
    0x80000000n,
    0xffffffffn,
    BigInt(rng.int(0x10000)),
  ];
}

function sizeValues(cur: bigint, L: Layout): bigint[] {
  const cs = BigInt(L.clusterSize);
  return [0n, 1n, 511n, 512n, 513n, cur - 512n, cur + 512n, cur + 1n, cur + cs, cur * 2n, cur * 1024n, TWO(32), TWO(40), TWO(50), TWO(53), TWO(56), TWO(62), TWO(63) - 1n, TWO(63), MASK64, MASK64 - 511n];
}

function fieldValue(f: Field, cur: bigint, L: Layout, rng: Rng): bigint {
  const r = rng.next();
  if (r < 0.1) return cur ^ TWO(rng.int(f.size * 8));
  if (r < 0.15) return read(rng.bytes(f.size), 0, f.size, false);
  if (f.special && r < 0.55) return rng.pick(f.special);
  switch (f.kind) {
    case 'offset':
      return rng.pick(offsetValues(L, rng));
    case 'count':
      return rng.pick(countValues(cur, rng));
    case 'size':
      return rng.pick(sizeValues(cur, L));
    case 'bits': {
      const known = L.format === 'qed' ? [0n, 1n, 2n, 4n, 7n, 8n] : [0n, 1n, 2n, 3n, 4n, 8n, 0x10n, 0x1fn, 0x20n];
      if (rng.bool(0.5)) return cur ^ TWO(rng.bool(0.7) ? rng.int(6) : rng.int(64));
      return rng.pick([...known, TWO(63), MASK64]);
    }
    case 'enum':
      return rng.pick(f.special ?? [0n, 1n, 2n, MASK64]);
  }
}

function fieldEdit(b: Uint8Array, f: Field, L: Layout, rng: Rng): Edit {
  const cur = read(b, f.at, f.size, L.le);
  const v = fieldValue(f, cur, L, rng) & (TWO(f.size * 8) - 1n);
  return { at: f.at, hex: hex(encode(v, f.size, L.le)), why: `${f.name} = 0x${v.toString(16)} (was 0x${cur.toString(16)})` };
}

/** A qcow2 L1/L2/reftable or QED table entry set to something hostile. */
function entryEdit(b: Uint8Array, at: number, what: string, L: Layout, rng: Rng): Edit {
  const cur = read(b, at, 8, L.le);
  let v: bigint;
  const r = rng.next();
  if (L.format === 'qed') {
    if (r < 0.15) v = rng.pick([0n, 1n, 2n]);
    else if (r < 0.3 && L.l2.length > 0) v = read(b, rng.pick(L.l2), 8, true); // duplicate reference
    else if (r < 0.4) v = cur ^ TWO(rng.int(64));
    else if (r < 0.5) v = cur + BigInt(rng.pick([1, 512, L.clusterSize, -L.clusterSize]));
    else v = rng.pick(offsetValues(L, rng));
  } else {
    const flags = cur & (TWO(63) | TWO(62) | 1n);
    if (r < 0.3) v = (rng.pick(offsetValues(L, rng)) & QCOW2_OFFSET_MASK) | flags;
    else if (r < 0.4) v = rng.pick(offsetValues(L, rng)); // raw value: reserved bits and all
    else if (r < 0.5) v = cur ^ TWO(rng.pick([0, 1, 5, 8, 9, 10, 16, 55, 56, 60, 61, 62, 63]));
    else if (r < 0.6) v = cur | TWO(rng.range(1, 8)); // reserved low bits
    else if (r < 0.7) v = cur | TWO(rng.range(56, 61)); // reserved high bits
    else if (r < 0.8 && L.l2.length > 0) v = read(b, rng.pick([...L.l2, ...L.l1]), 8, false); // shared reference
    else if (r < 0.9) v = cur + BigInt(rng.pick([0x200, L.clusterSize, -L.clusterSize, L.clusterSize * 2]));
    else v = rng.pick([0n, 1n, TWO(63), TWO(63) | 1n, TWO(62), MASK64]);
  }
  v &= MASK64;
  return { at, hex: hex(encode(v, 8, L.le)), why: `${what} @${at} = 0x${v.toString(16)} (was 0x${cur.toString(16)})` };
}

/** A compressed descriptor with a hostile offset or sector count. */
function compressedEdit(b: Uint8Array, at: number, L: Layout, rng: Rng): Edit {
  const cb = Math.log2(L.clusterSize);
  const shift = BigInt(70 - cb);
  const nbits = BigInt(cb - 8);
  const cur = read(b, at, 8, false);
  let host = cur & ((1n << shift) - 1n);
  let sectors = (cur >> shift) & ((1n << nbits) - 1n);
  const r = rng.next();
  if (r < 0.3) sectors = rng.pick([0n, 1n, (1n << nbits) - 1n, sectors + 1n]) & ((1n << nbits) - 1n);
  else if (r < 0.6) host = rng.pick(offsetValues(L, rng)) & ((1n << shift) - 1n);
  else if (r < 0.8) host = host + BigInt(rng.pick([1, 7, 511, 512, -512, L.clusterSize]));
  else {
    sectors = BigInt(rng.int(1 << Number(nbits)));
    host = BigInt(rng.int(L.fileSize + L.clusterSize));
  }
  host &= (1n << shift) - 1n;
  const v = (cur & (TWO(63) | TWO(62))) | (sectors << shift) | host;
  return { at, hex: hex(encode(v, 8, false)), why: `compressed descriptor @${at} = 0x${v.toString(16)} (was 0x${cur.toString(16)})` };
}

function bytesEdit(at: number, data: Uint8Array, why: string): Edit {
  return { at, hex: hex(data), why };
}

/** Strings that parsers look up in tables: real names, near misses and Object.prototype's keys. */
const STRING_DICTIONARY = [
  'aes',
  'aes-256',
  'serpent',
  'twofish',
  'cast5',
  'sm4',
  'des',
  'xts-plain64',
  'cbc-essiv:sha256',
  'cbc-plain',
  'ecb',
  'xts',
  'xts-',
  '-plain64',
  'cbc-essiv:',
  'sha256',
  'sha1',
  'md5',
  'qcow2',
  'raw',
  'qed',
  'vmdk',
  'file',
  'constructor',
  '__proto__',
  'toString',
  'hasOwnProperty',
  'valueOf',
  'prototype',
  '',
];

type Mutator = (b: Uint8Array, L: Layout, rng: Rng) => Edit | Edit[] | undefined;

/**
 * One 32-bit LUKS header field (big-endian) set to a value that matters to
 * it: iteration counts up to 2^32-1 (work a hostile header asks for),
 * stripes (memory), key material and payload offsets past the end, key
 * sizes, slot states.
 */
function luksFieldEdit(b: Uint8Array, base: number, L: Layout, r: Rng): Edit {
  const slot = r.int(8);
  const s = base + 208 + slot * 48;
  const endSectors = Math.ceil(L.fileSize / 512);
  const cur = (at: number): number => Number(read(b, at, 4, false));
  const fields: Array<[string, number, number[]]> = [
    ['mk-digest-iter', base + 164, [0, 1, 999, 1000, 1001, 1 << 26, (1 << 26) + 1, 0x7fffffff, 0xffffffff]],
    ['key-bytes', base + 108, [0, 1, 16, 24, 31, 32, 33, 48, 63, 64, 65, 128, 0x10000, 0xffffffff]],
    ['payload-offset', base + 104, [0, 1, 7, 8, cur(base + 104) - 1, cur(base + 104) + 8, endSectors, endSectors + 1, 0x7fffffff, 0xffffffff]],
    [`slot ${slot} state`, s, [0x00ac71f3, 0x0000dead, 0, 0xffffffff]],
    [`slot ${slot} iterations`, s + 4, [0, 1, 1000, 20000, 100000, 1 << 26, (1 << 26) + 1, 0x80000000, 0xffffffff]],
    [`slot ${slot} key offset`, s + 40, [0, 1, 7, 8, cur(s + 40) + 1, cur(base + 104), endSectors, endSectors + 8, 0x7fffffff, 0xffffffff]],
    [`slot ${slot} stripes`, s + 44, [0, 1, 2, 3999, 4000, 4001, 0x10000, 0x7fffffff, 0xffffffff]],
  ];
  const [name, at, values] = r.pick(fields);
  const v = r.pick(values) >>> 0;
  return bytesEdit(at, encode(BigInt(v), 4, false), `LUKS ${name} = ${v}`);
}

const MUTATORS: Array<{ name: string; weight: number; run: Mutator }> = [
  { name: 'header', weight: 10, run: (b, L, r) => (L.header.length ? fieldEdit(b, r.pick(L.header), L, r) : undefined) },
  {
    name: 'extension',
    weight: 4,
    run: (b, L, r) => {
      if (L.format !== 'qcow2') return undefined;
      if (L.extensions.length === 0 || r.bool(0.25)) {
        // Append an extension at the end marker.
        const magic = r.pick([0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441, 0x12345678]);
        const len = r.pick([0, 1, 8, 15, 16, 24, 48, 100, 0x7fffffff, 0xffffffff]);
        const data = new Uint8Array(8 + Math.min(len, 64));
        const dv = new DataView(data.buffer);
        dv.setUint32(0, magic);
        dv.setUint32(4, len);
        data.set(r.bytes(data.length - 8), 8);
        return bytesEdit(L.extEnd, data, `new extension 0x${magic.toString(16)} len ${len} at ${L.extEnd}`);
      }
      const e = r.pick(L.extensions);
      const k = r.int(4);
      if (k === 0) {
        const len = r.pick([0, 1, 7, 8, e.len - 1, e.len + 1, e.len + 8, L.clusterSize, 0x7fffffff, 0xffffffff]) >>> 0;
        return bytesEdit(e.at + 4, encode(BigInt(len), 4, false), `extension 0x${e.magic.toString(16)} length = ${len}`);
      }
      if (k === 1) {
        const magic = r.pick([0, 0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441, 0xdeadbeef]);
        return bytesEdit(e.at, encode(BigInt(magic), 4, false), `extension 0x${e.magic.toString(16)} magic = 0x${magic.toString(16)}`);
      }
      if (k === 2 && e.magic === 0x23852875) {
        // Bitmaps extension fields: nb_bitmaps, reserved, directory size, directory offset.
        const f = r.pick<Field>([
          { name: 'bitmaps.nb_bitmaps', at: e.at + 8, size: 4, kind: 'count', special: [0n, 1n, 2n, 3n, 65535n, 65536n] },
          { name: 'bitmaps.reserved', at: e.at + 12, size: 4, kind: 'count' },
          { name: 'bitmaps.directory_size', at: e.at + 16, size: 8, kind: 'size', special: [0n, 23n, 24n, 64n << 20n, (64n << 20n) + 1n] },
          { name: 'bitmaps.directory_offset', at: e.at + 24, size: 8, kind: 'offset' },
        ]);
        return fieldEdit(b, f, L, r);
      }
      if (k === 2 && e.magic === 0x0537be77) {
        const f = r.pick<Field>([
          { name: 'crypto.offset', at: e.at + 8, size: 8, kind: 'offset' },
          { name: 'crypto.length', at: e.at + 16, size: 8, kind: 'size' },
        ]);
        return fieldEdit(b, f, L, r);
      }
      // Contents: garbage, a format name, or a string without its terminator.
      const n = Math.max(1, Math.min(e.len, 64));
      const text = r.pick([...STRING_DICTIONARY, 'foo', 'a'.repeat(16), 'img.qcow2', 'base.qcow2', 'img.data', '/dev/zero']);
      const data = r.bool(0.5) ? r.bytes(n) : new TextEncoder().encode(text.padEnd(n, r.bool() ? '\0' : 'x')).subarray(0, n);
      return bytesEdit(e.at + 8, data, `extension 0x${e.magic.toString(16)} contents`);
    },
  },
  { name: 'l1', weight: 8, run: (b, L, r) => (L.l1.length ? entryEdit(b, r.pick(L.l1), 'L1 entry', L, r) : undefined) },
  { name: 'l2', weight: 10, run: (b, L, r) => (L.l2.length ? entryEdit(b, r.pick(L.l2), 'L2 entry', L, r) : undefined) },
  {
    name: 'l2-compressed',
    weight: 6,
    run: (b, L, r) => {
      if (L.format !== 'qcow2') return undefined;
      if (L.l2Compressed.length > 0 && r.bool(0.7)) return compressedEdit(b, r.pick(L.l2Compressed), L, r);
      if (L.l2.length === 0) return undefined;
      // Turn a normal entry into a compressed descriptor.
      const at = r.pick(L.l2);
      const cur = read(b, at, 8, false);
      const v = TWO(62) | (cur & (TWO(62) - 1n)) | (r.bool() ? TWO(63) : 0n);
      return { at, hex: hex(encode(v, 8, false)), why: `L2 entry @${at} marked compressed (0x${v.toString(16)})` };
    },
  },
  {
    name: 'l2-bitmap',
    weight: 4,
    run: (b, L, r) => {
      if (!L.extL2 || L.l2Bitmaps.length === 0) return undefined;
      const at = r.pick(L.l2Bitmaps);
      const cur = read(b, at, 8, false);
      const v = r.pick([0n, MASK64, 0xffffffffn, 0xffffffffn << 32n, cur ^ TWO(r.int(64)), cur | (cur << 32n), (cur >> 32n) | (cur << 32n), read(r.bytes(8), 0, 8, false)]) & MASK64;
      return { at, hex: hex(encode(v, 8, false)), why: `extended L2 bitmap @${at} = 0x${v.toString(16)}` };
    },
  },
  { name: 'reftable', weight: 5, run: (b, L, r) => (L.reftable.length ? entryEdit(b, r.pick(L.reftable), 'refcount table entry', L, r) : undefined) },
  {
    name: 'refblock',
    weight: 5,
    run: (b, L, r) => {
      if (L.refblocks.length === 0) return undefined;
      const blk = r.pick(L.refblocks);
      const bytes = Math.max(1, L.refcountBits / 8);
      const entries = (blk.size * 8) / L.refcountBits;
      const i = r.int(Math.min(entries, 4096));
      const at = blk.at + Math.floor((i * L.refcountBits) / 8);
      const data = r.pick([new Uint8Array(bytes), new Uint8Array(bytes).fill(0xff), r.bytes(bytes), encode(r.pick([1n, 2n, 3n]), bytes, false)]);
      if (r.bool(0.1)) return bytesEdit(blk.at, r.bytes(Math.min(blk.size, 512)), `refcount block @${blk.at} garbage`);
      return bytesEdit(at, data, `refcount block @${blk.at} entry ${i} = ${hex(data)}`);
    },
  },
  {
    name: 'compressed-payload',
    weight: 5,
    run: (b, L, r) => {
      if (L.compressed.length === 0) return undefined;
      const c = r.pick(L.compressed);
      const k = r.int(3);
      if (k === 0) return bytesEdit(c.at, r.bytes(Math.min(c.size, 64)), `compressed payload @${c.at} garbage start`);
      if (k === 1) return bytesEdit(c.at + r.int(c.size), r.bytes(r.range(1, 4)), `compressed payload @${c.at} flipped bytes`);
      return bytesEdit(c.at, new Uint8Array(Math.min(c.size, 512)).fill(r.pick([0, 0xff])), `compressed payload @${c.at} filled`);
    },
  },
  {
    name: 'snapshot',
    weight: 5,
    run: (b, L, r) => {
      if (L.snapshots.length > 0 && r.bool(0.7)) return fieldEdit(b, r.pick(L.snapshots), L, r);
      if (L.snapshotL1.length === 0) return undefined;
      return entryEdit(b, r.pick(L.snapshotL1), 'snapshot L1 entry', L, r);
    },
  },
  {
    name: 'bitmap',
    weight: 4,
    run: (b, L, r) => {
      if (L.bitmapDir.length > 0 && r.bool(0.7)) return fieldEdit(b, r.pick(L.bitmapDir), L, r);
      if (L.bitmapTables.length === 0) return undefined;
      return entryEdit(b, r.pick(L.bitmapTables), 'bitmap table entry', L, r);
    },
  },
  {
    name: 'luks',
    weight: 6,
    run: (b, L, r) => {
      if (!L.luks) return undefined;
      if (r.bool(0.6)) {
        // The text fields (cipher name, mode, hash, UUID) from a dictionary: names code may look up.
        const [off, len, what] = r.pick([
          [8, 32, 'cipher-name'],
          [40, 32, 'cipher-mode'],
          [72, 32, 'hash-spec'],
          [168, 40, 'uuid'],
        ] as const);
        const word = r.pick(STRING_DICTIONARY);
        const data = new Uint8Array(len);
        data.set(new TextEncoder().encode(word).subarray(0, len));
        if (r.bool(0.2)) data.fill(0x41, Math.min(len, word.length)); // no terminator
        return bytesEdit(L.luks.at + off, data, `LUKS ${what} = '${word}'`);
      }
      if (r.bool(0.6)) return luksFieldEdit(b, L.luks.at, L, r);
      const at = L.luks.at + r.pick([0, 6, 8, 40, 72, 104, 108, 164, 208, 212, 248, 252, 256, r.int(L.luks.size)]);
      return bytesEdit(at, r.bool(0.5) ? r.bytes(r.range(1, 8)) : new Uint8Array(4).fill(r.pick([0, 0xff])), `LUKS header bytes at ${at}`);
    },
  },
  {
    name: 'copy-cluster',
    weight: 2,
    run: (b, L, r) => {
      const cs = L.clusterSize;
      const metas = L.metadata.filter((m) => m >= 0 && m + cs <= b.length && m % cs === 0);
      if (metas.length < 2) return undefined;
      const from = r.pick(metas);
      const to = r.pick(metas);
      if (from === to) return undefined;
      return bytesEdit(to, b.slice(from, from + Math.min(cs, 4096)), `metadata at ${from} copied over ${to}`);
    },
  },
  {
    // A much larger disk that still passes the L1 size check: the L1 table grows over whatever follows it.
    name: 'grow',
    weight: 3,
    run: (b, L, r) => {
      if (L.format === 'qed') {
        const cs = BigInt(L.clusterSize);
        const ts = BigInt(u32(b, 8, true));
        const max = (ts * cs / 8n) * (ts * cs / 8n) * cs;
        const size = (r.pick([max, max / 2n, max / 3n, max - 512n, BigInt(L.fileSize) * 64n]) / 512n) * 512n;
        return { at: 48, hex: hex(encode(size, 8, true)), why: `QED image_size = ${size}` };
      }
      if (L.format !== 'qcow2') return undefined;
      const span = BigInt(L.clusterSize) * (1n << BigInt(L.l2Bits));
      const l1 = BigInt(r.pick([2, 17, 1000, 65536, 0x100000, 0x2000000]));
      const size = l1 * span - BigInt(r.pick([0, 512, Number(span / 2n)]));
      return [
        { at: 24, hex: hex(encode(size, 8, false)), why: `size = ${size}` },
        { at: 36, hex: hex(encode(l1, 4, false)), why: `l1_size = ${l1}` },
      ];
    },
  },
  {
    // The name of the backing file: the image itself, its own backing file, nothing, a missing file.
    name: 'backing-name',
    weight: 2,
    run: (b, L, r) => {
      const le = L.format === 'qed';
      if (L.format === 'raw') return undefined;
      const off = le ? u32(b, 56, true) : Number(u64(b, 8, false));
      if (off === 0 || off >= L.clusterSize) return undefined;
      const name = r.pick(['img.qcow2', 'img.qed', 'base.qcow2', 'base.raw', 'img.data', 'missing.img', 'constructor', '']);
      const bytes = new TextEncoder().encode(name);
      const sizeAt = le ? 60 : 16;
      return [
        bytesEdit(off, new Uint8Array([...bytes, 0]), `backing name = '${name}'`),
        bytesEdit(sizeAt, encode(BigInt(bytes.length), 4, le), `backing name size = ${bytes.length}`),
      ];
    },
  },
  {
    // A refcount table whose entries all name one cluster (a full refcount block, or any data).
    name: 'reftable-flood',
    weight: 2,
    run: (b, L, r) => {
      if (L.format !== 'qcow2' || L.reftable.length === 0) return undefined;
      const cs = L.clusterSize;
      // Allocation scans every cluster the flooded table describes (as qemu does): keep that to
      // about 16 M entries at the narrowest refcount width, so the case stays a test of correctness.
      const n = Math.max(2, Math.min(r.pick([16, 256, 2048]), Math.floor(2 ** 24 / (cs * 8))));
      const targets = [...L.metadata.filter((m) => m % cs === 0 && m > 0), ...L.refblocks.map((x) => x.at)];
      if (targets.length === 0) return undefined;
      const target = r.pick(targets);
      const at = Math.ceil(L.fileSize / cs) * cs;
      const table = new Uint8Array(Math.ceil((n * 8) / cs) * cs);
      const entry = encode(BigInt(target), 8, false);
      for (let i = 0; i < n; i++) table.set(entry, i * 8);
      const edits: Edit[] = [
        bytesEdit(at, table, `refcount table of ${n} entries naming ${target} at ${at}`),
        { at: 48, hex: hex(encode(BigInt(at), 8, false)), why: `refcount_table_offset = ${at}` },
        { at: 56, hex: hex(encode(BigInt(table.length / cs), 4, false)), why: `refcount_table_clusters = ${table.length / cs}` },
      ];
      if (r.bool(0.5)) edits.unshift(bytesEdit(target, new Uint8Array(cs).fill(0xff), `cluster ${target} filled with 0xff`));
      return edits;
    },
  },
  {
    // The same refcount blocks read with another entry width.
    name: 'refcount-order',
    weight: 2,
    run: (b, L, r) => {
      if (L.format !== 'qcow2' || u32(b, 4, false) !== 3) return undefined;
      const order = r.pick([0, 1, 2, 3, 4, 5, 6]);
      return { at: 96, hex: hex(encode(BigInt(order), 4, false)), why: `refcount_order = ${order}` };
    },
  },
  {
    // Everything that names a table moved by one cluster.
    name: 'shift-pointer',
    weight: 2,
    run: (b, L, r) => {
      if (L.format !== 'qcow2') return undefined;
      const at = r.pick([40, 48, 64]);
      const cur = read(b, at, 8, false);
      const v = (cur + BigInt(r.pick([-1, 1, 2]) * L.clusterSize)) & MASK64;
      return { at, hex: hex(encode(v, 8, false)), why: `header pointer @${at} = 0x${v.toString(16)} (was 0x${cur.toString(16)})` };
    },
  },
  {
    name: 'byte-flip',
    weight: 8,
    run: (b, L, r) => {
      if (b.length === 0) return undefined;
      // Biased to the first cluster and metadata, where parsing happens.
      const region = r.next();
      let at: number;
      if (region < 0.4) at = r.int(Math.min(b.length, L.clusterSize, 4096));
      else if (region < 0.8 && L.metadata.length > 0) at = Math.min(b.length - 1, Math.max(0, r.pick(L.metadata) + r.int(L.clusterSize)));
      else at = r.int(b.length);
      const n = r.pick([1, 1, 1, 2, 4, 8, 16]);
      const cur = b.slice(at, at + n);
      const data = r.bool(0.5) ? cur.map((x) => x ^ (1 << r.int(8))) : r.bytes(cur.length);
      return bytesEdit(at, data, `${n} random bytes at ${at}`);
    },
  },
  {
    name: 'truncate',
    weight: 3,
    run: (b, L, r) => {
      const cs = L.clusterSize;
      const k = r.next();
      let len: number;
      if (k < 0.2) len = r.pick([0, 1, 4, 63, 64, 71, 72, 100, 104, 111, 112, 511, 512]);
      else if (k < 0.5 && L.metadata.length > 0) len = Math.max(0, r.pick(L.metadata) + r.pick([0, 8, 512, cs - 8, cs]));
      else if (k < 0.8) len = Math.floor(r.int(Math.ceil(b.length / cs) + 1)) * cs;
      else len = b.length + r.pick([1, 511, cs, cs * 16]);
      return { truncate: len, why: `file length ${len} (was ${b.length})` };
    },
  },
];

const TOTAL_WEIGHT = MUTATORS.reduce((n, m) => n + m.weight, 0);

/** A list of 1..4 edits for this seed (fewer is more common). */
export function mutate(seed: Seed, layout: Layout, rng: Rng): Edit[] {
  const n = rng.pick([1, 1, 1, 2, 2, 3, 4, 6]);
  const edits: Edit[] = [];
  let bytes = seed.bytes;
  for (let tries = 0; edits.length < n && tries < 40; tries++) {
    let w = rng.next() * TOTAL_WEIGHT;
    let m = MUTATORS[0]!;
    for (const x of MUTATORS) {
      w -= x.weight;
      if (w < 0) {
        m = x;
        break;
      }
    }
    const out = m.run(bytes, layout, rng);
    if (!out) continue;
    const list = Array.isArray(out) ? out : [out];
    edits.push(...list);
    // Later edits see earlier ones (a count after an offset, etc.).
    bytes = applyEdits(bytes, list);
  }
  return edits;
}

/** The image after `edits` (the input is not modified). */
export function applyEdits(input: Uint8Array, edits: readonly Edit[]): Uint8Array {
  let out = input.slice();
  for (const e of edits) {
    if ('truncate' in e) {
      const next = new Uint8Array(e.truncate);
      next.set(out.subarray(0, Math.min(out.length, e.truncate)));
      out = next;
      continue;
    }
    const data = Buffer.from(e.hex, 'hex');
    const end = e.at + data.length;
    if (end > out.length) {
      // Writes past the end grow the file (bounded: offsets here come from the seed).
      if (end > input.length + 64 * 1024 * 1024) continue;
      const next = new Uint8Array(end);
      next.set(out);
      out = next;
    }
    out.set(data, e.at);
  }
  return out;
}
