/**
 * qcow2 written front to back, for pipes: a first pass finds the allocated
 * clusters (and compressed sizes), then the file is emitted in order:
 * header, refcount table, refcount blocks, L1 table, L2 tables, data
 * (stream-layout.ts). Refcount blocks and L2 tables are generated as they
 * are emitted by walking the same deterministic placement again, so memory
 * is a few bytes per allocated cluster plus the compressed-payload budget.
 */
import { checkCompressionLevel } from '../../block/compression-level.js';
import type { Codecs } from '../../block/codecs.js';
import { limitConcurrency, orderedMap } from '../../block/ordered.js';
import type { StreamInput, StreamTargetOptions } from '../../block/stream-target.js';
import { ImageError } from '../../errors.js';
import { alignUp, divCeil, isPowerOfTwo } from '../../units.js';
import * as C from './constants.js';
import { FEATURE_NAMES } from './create.js';
import { serializeHeader, type Qcow2Header } from './header.js';
import { setEntryAt } from './refcounts.js';
import { computeLayout, l2EntriesOf, maxRefcountOf, PlacementWalker, type AllocationList, type Layout, type Placement } from './stream-layout.js';
import { clusterIsZero, scanAllocation, type Compress, type KeptPayloads } from './stream-scan.js';

const MiB = 1024 * 1024;
const TWO_32 = 0x1_0000_0000;
/** Output chunks are gathered up to this size: fewer, larger writes to the pipe. */
const CHUNK = MiB;

const bad = (msg: string) => new ImageError('bad-argument', msg);

export interface Qcow2StreamConfig {
  clusterSize: number;
  version: 2 | 3;
  refcountBits: number;
  lazyRefcounts: boolean;
  compressionType: 'zlib' | 'zstd';
  compress: Compress | undefined;
  sparseSize: number;
  parallel: number;
  memoryBudget: number;
}

/** The options, checked with qemu's rules and messages. */
export function qcow2StreamConfig(o: StreamTargetOptions): Qcow2StreamConfig {
  const clusterSize = o.clusterSize ?? 65536;
  const version = o.version ?? 3;
  const refcountBits = o.refcountBits ?? 16;
  const compressionType = o.compressionType ?? 'zlib';
  if (!isPowerOfTwo(clusterSize) || clusterSize < 512 || clusterSize > 2 * MiB) throw bad('Cluster size must be a power of two between 512 and 2048k');
  if (version !== 2 && version !== 3) throw bad(`Invalid compatibility level: '${String(version)}'`);
  if (refcountBits > 64 || !isPowerOfTwo(refcountBits)) throw bad('Refcount width must be a power of two and may not exceed 64 bits');
  if (version < 3 && refcountBits !== 16) throw bad('Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)');
  if (compressionType !== 'zlib' && compressionType !== 'zstd') throw bad(`Parameter 'compression-type' does not accept value '${String(compressionType)}'`);
  if (o.compressionLevel !== undefined && !o.compress) throw bad("'compression_level' applies to compressed output only (-c)");
  if (version < 3 && compressionType !== 'zlib') throw bad('Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  if (version < 3 && o.lazyRefcounts) throw bad('Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  const sparseSize = o.sparseSize ?? 4096;
  const parallel = Math.max(1, o.parallel ?? 8);
  if (!(sparseSize >= 0)) throw bad('Invalid sparse size');
  return {
    clusterSize,
    version,
    refcountBits,
    lazyRefcounts: o.lazyRefcounts ?? false,
    compressionType,
    compress: o.compress ? compressorOf(o.codecs, compressionType, clusterSize, Math.max(4, parallel), o.compressionLevel) : undefined,
    sparseSize,
    parallel,
    memoryBudget: Math.max(0, o.memoryBudget ?? 64 * MiB),
  };
}

function compressorOf(codecs: Codecs | undefined, type: 'zlib' | 'zstd', cs: number, inFlight: number, level: number | undefined): Compress {
  if (level !== undefined) checkCompressionLevel(type, level);
  const f = type === 'zstd' ? codecs?.zstdCompress : codecs?.deflateRaw;
  if (!f) throw new ImageError('unsupported', `No ${type} compressor is available`);
  // A payload must be smaller than a cluster, or the cluster is stored plain (as qemu does).
  // Bounded: each compression in flight holds its codec state (a few hundred KiB for zlib).
  return limitConcurrency((cluster: Uint8Array) => f(cluster, cs - 1, level), inFlight);
}

/** The qcow2 file for `input`, as consecutive chunks. */
export async function* qcow2StreamWriter(input: StreamInput, opts: StreamTargetOptions): AsyncGenerator<Uint8Array> {
  const cfg = qcow2StreamConfig(opts);
  const cs = cfg.clusterSize;
  const size = alignUp(input.size, C.SECTOR_SIZE);
  const clusters = divCeil(size, cs);
  const scan = await scanAllocation(input, {
    clusterSize: cs,
    clusters,
    sparseSize: cfg.sparseSize,
    compress: cfg.compress,
    parallel: cfg.parallel,
    memoryBudget: cfg.memoryBudget,
    chunkBytes: CHUNK,
  });
  const maxRef = maxRefcountOf(cfg.refcountBits);
  const sizing = new PlacementWalker(scan.alloc, cs, maxRef);
  while (sizing.next());
  const layout = computeLayout({ clusterSize: cs, size, refcountBits: cfg.refcountBits, l2Tables: scan.l2Tables, dataClusters: divCeil(sizing.end, cs) });
  // The compressed descriptor holds offsets below 2^(70 - cluster_bits).
  if (cfg.compress && layout.totalClusters * cs > 2 ** (70 - layout.clusterBits)) throw new ImageError('unsupported', 'Compressed cluster offset is too large');

  const gather = new Gatherer();
  for (const part of metadata(layout, scan.alloc, cfg)) {
    const chunk = gather.add(part);
    if (chunk) yield chunk;
  }
  const rest = gather.flush();
  if (rest) yield rest;
  input.checkAborted();
  yield* data(input, layout, scan.alloc, scan.kept, cfg);
}

/** Small parts gathered into chunks of about CHUNK bytes. */
class Gatherer {
  private parts: Uint8Array[] = [];
  private bytes = 0;

  add(part: Uint8Array): Uint8Array | undefined {
    this.parts.push(part);
    this.bytes += part.length;
    return this.bytes >= CHUNK ? this.flush() : undefined;
  }

  flush(): Uint8Array | undefined {
    if (this.parts.length === 0) return undefined;
    const out = this.parts.length === 1 ? this.parts[0]! : new Uint8Array(this.bytes);
    if (this.parts.length > 1) {
      let pos = 0;
      for (const p of this.parts) {
        out.set(p, pos);
        pos += p.length;
      }
    }
    this.parts = [];
    this.bytes = 0;
    return out;
  }
}

function header(layout: Layout, cfg: Qcow2StreamConfig): Uint8Array {
  const cs = layout.clusterSize;
  const h: Qcow2Header = {
    version: cfg.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: layout.clusterBits,
    clusterSize: cs,
    size: layout.size,
    cryptMethod: C.CRYPT_NONE,
    l1Size: layout.l1Entries,
    l1TableOffset: layout.l1Entries > 0 ? layout.l1Cluster * cs : 0,
    refcountTableOffset: layout.refcountTableCluster * cs,
    refcountTableClusters: layout.refcountTableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: cfg.compressionType === 'zstd' ? BigInt(C.INCOMPAT_COMPRESSION) : 0n,
    compatibleFeatures: cfg.lazyRefcounts ? BigInt(C.COMPAT_LAZY_REFCOUNTS) : 0n,
    autoclearFeatures: 0n,
    refcountOrder: Math.log2(cfg.refcountBits),
    headerLength: cfg.version === 3 ? C.HEADER_V3_LENGTH : C.HEADER_V2_LENGTH,
    compressionType: cfg.compressionType === 'zstd' ? C.COMPRESSION_ZSTD : C.COMPRESSION_ZLIB,
    unknownFields: new Uint8Array(0),
    extensions: {
      // As qemu-img create writes it: v3 images with clusters larger than 4 KiB.
      featureTable: cfg.version === 3 && cs > 4096 ? FEATURE_NAMES.map(([type, bit, name]) => ({ type, bit, name })) : undefined,
      bitmapsInconsistent: false,
      unknown: [],
    },
  };
  return serializeHeader(h);
}

/** The L2 entry of a placed cluster, as high and low words. */
function l2Entry(p: Placement, dataStart: number, clusterBits: number): [number, number] {
  const host = dataStart + p.offset;
  if (!p.compressed) return [(C.OFLAG_COPIED_HI | Math.floor(host / TWO_32)) >>> 0, host >>> 0];
  // Additional 512-byte sectors the payload touches after its first, in the bits above the offset.
  const field = Math.floor((host + p.length - 1) / C.SECTOR_SIZE) - Math.floor(host / C.SECTOR_SIZE);
  const shift = 70 - clusterBits - 32;
  return [(C.OFLAG_COMPRESSED_HI | (field << shift) | Math.floor(host / TWO_32)) >>> 0, host >>> 0];
}

function putEntry(table: DataView, i: number, hi: number, lo: number): void {
  table.setUint32(8 * i, hi, false);
  table.setUint32(8 * i + 4, lo, false);
}

/** Header, refcount table, refcount blocks, L1 table and L2 tables, cluster by cluster. */
function* metadata(layout: Layout, alloc: AllocationList, cfg: Qcow2StreamConfig): Generator<Uint8Array> {
  const cs = layout.clusterSize;
  const maxRef = maxRefcountOf(cfg.refcountBits);
  yield header(layout, cfg);

  const table = new Uint8Array(layout.refcountTableClusters * cs);
  const tv = new DataView(table.buffer);
  for (let b = 0; b < layout.refcountBlocks; b++) {
    const off = (layout.refcountBlockCluster + b) * cs;
    putEntry(tv, b, Math.floor(off / TWO_32), off >>> 0);
  }
  for (let i = 0; i < layout.refcountTableClusters; i++) yield table.subarray(i * cs, (i + 1) * cs);

  yield* refcountBlocks(layout, alloc, cfg, maxRef);

  // L1: one entry per L2 table in use, the tables following in guest order.
  const perL2 = l2EntriesOf(cs);
  const perL1Cluster = cs / C.L1_ENTRY_SIZE;
  let l2Rank = 0;
  let a = 0;
  for (let k = 0; k < layout.l1Clusters; k++) {
    const l1 = new Uint8Array(cs);
    const v = new DataView(l1.buffer);
    const endIndex = (k + 1) * perL1Cluster;
    while (a < alloc.length) {
      const t = Math.floor(alloc.cluster(a) / perL2);
      if (t >= endIndex) break;
      const off = (layout.l2Cluster + l2Rank++) * cs;
      putEntry(v, t - k * perL1Cluster, (C.OFLAG_COPIED_HI | Math.floor(off / TWO_32)) >>> 0, off >>> 0);
      // Skip to the first cluster of the next table.
      while (a < alloc.length && Math.floor(alloc.cluster(a) / perL2) === t) a++;
    }
    yield l1;
  }

  const walker = new PlacementWalker(alloc, cs, maxRef);
  const dataStart = layout.dataCluster * cs;
  let p = walker.next();
  while (p) {
    const t = Math.floor(p.guestCluster / perL2);
    const l2 = new Uint8Array(cs);
    const v = new DataView(l2.buffer);
    while (p && Math.floor(p.guestCluster / perL2) === t) {
      const [hi, lo] = l2Entry(p, dataStart, layout.clusterBits);
      putEntry(v, p.guestCluster - t * perL2, hi, lo);
      p = walker.next();
    }
    yield l2;
  }
}

/**
 * Every host cluster's refcount: 1 for metadata and plain data clusters,
 * and for each cluster a compressed payload touches, one per payload.
 * Placements come in host order, so a running count per cluster suffices.
 */
function* refcountBlocks(layout: Layout, alloc: AllocationList, cfg: Qcow2StreamConfig, maxRef: number): Generator<Uint8Array> {
  const cs = layout.clusterSize;
  const order = Math.log2(cfg.refcountBits);
  const per = layout.refcountsPerBlock;
  const walker = new PlacementWalker(alloc, cs, maxRef);
  let p = walker.next();
  for (let b = 0; b < layout.refcountBlocks; b++) {
    const block = new Uint8Array(cs);
    const lo = b * per;
    const hi = Math.min(lo + per, layout.totalClusters);
    for (let c = lo; c < Math.min(hi, layout.dataCluster); c++) setEntryAt(block, c - lo, order, 1);
    let cur = -1;
    let count = 0;
    const put = (): void => {
      if (cur >= 0) setEntryAt(block, cur - lo, order, count);
    };
    while (p) {
      const first = layout.dataCluster + Math.floor(p.offset / cs);
      const last = layout.dataCluster + Math.floor((p.offset + p.length - 1) / cs);
      if (first >= hi) break;
      for (let c = Math.max(first, lo); c <= Math.min(last, hi - 1); c++) {
        if (c !== cur) {
          put();
          cur = c;
          count = 0;
        }
        count++;
      }
      if (last >= hi) break; // the payload goes on into the next block
      p = walker.next();
    }
    put();
    yield block;
  }
}

interface Group {
  placements: Placement[];
  /** Host bytes from the first placement to the next group's (padding included). */
  start: number;
  end: number;
  /** Kept payloads, by position in `placements`. */
  kept: (Uint8Array | undefined)[];
}

/** Placements in runs of about CHUNK host bytes, each with the bytes up to the next run. */
function* groups(layout: Layout, alloc: AllocationList, kept: KeptPayloads, cfg: Qcow2StreamConfig): Generator<Group> {
  const cs = layout.clusterSize;
  const walker = new PlacementWalker(alloc, cs, maxRefcountOf(cfg.refcountBits));
  const dataEnd = layout.dataClusters * cs;
  let p = walker.next();
  while (p) {
    const g: Group = { placements: [], start: p.offset, end: 0, kept: [] };
    while (p && (g.placements.length === 0 || p.offset + p.length - g.start <= CHUNK)) {
      g.placements.push(p);
      // Taken here, in order: the arena is read front to back.
      g.kept.push(p.compressed && p.index < kept.upTo ? kept.take(p.length) : undefined);
      p = walker.next();
    }
    g.end = p ? p.offset : dataEnd;
    yield g;
  }
}

/** The data area: each group read (and compressed again where not kept) with `parallel` groups in flight. */
async function* data(input: StreamInput, layout: Layout, alloc: AllocationList, kept: KeptPayloads, cfg: Qcow2StreamConfig): AsyncGenerator<Uint8Array> {
  const cs = layout.clusterSize;
  const total = input.size;
  let zeroPayload: Promise<Uint8Array | null> | undefined;
  /** Compress a cluster again; all-zero clusters (stored with -S 0) share one payload. */
  const compressAgain = (cluster: Uint8Array): Promise<Uint8Array | null> => {
    if (cfg.sparseSize !== 0 || !clusterIsZero(cluster)) return cfg.compress!(cluster);
    zeroPayload ??= cfg.compress!(new Uint8Array(cs));
    return zeroPayload;
  };
  const build = async (g: Group): Promise<{ out: Uint8Array; guestEnd: number }> => {
    const out = new Uint8Array(g.end - g.start);
    const ps = g.placements;
    const jobs: Promise<void>[] = [];
    let i = 0;
    while (i < ps.length) {
      const p = ps[i]!;
      const keptPayload = g.kept[i];
      if (keptPayload) {
        out.set(keptPayload, p.offset - g.start);
        i++;
        continue;
      }
      // A run of guest-contiguous clusters of one kind is one read.
      let j = i + 1;
      while (j < ps.length && !g.kept[j] && ps[j]!.compressed === p.compressed && ps[j]!.guestCluster === ps[j - 1]!.guestCluster + 1) j++;
      const run = ps.slice(i, j);
      if (!p.compressed) {
        // Plain clusters next to each other lie next to each other on the host too.
        jobs.push(input.read(p.guestCluster * cs, out.subarray(p.offset - g.start, p.offset - g.start + run.length * cs)));
      } else {
        jobs.push(
          (async () => {
            const buf = new Uint8Array(run.length * cs);
            await input.read(p.guestCluster * cs, buf);
            await Promise.all(run.map(async (q, k) => {
              const payload = await compressAgain(buf.subarray(k * cs, (k + 1) * cs));
              if (!payload || payload.length !== q.length) {
                throw new ImageError('io', `Guest cluster ${q.guestCluster} compressed to a different size than in the first pass: did the source change during the conversion?`);
              }
              out.set(payload, q.offset - g.start);
            }));
          })(),
        );
      }
      i = j;
    }
    await Promise.all(jobs);
    return { out, guestEnd: (ps[ps.length - 1]!.guestCluster + 1) * cs };
  };
  for await (const r of orderedMap(groups(layout, alloc, kept, cfg), cfg.parallel, build)) {
    input.checkAborted();
    yield r.out;
    input.progress(total + Math.min(total, r.guestEnd), 2 * total);
  }
  input.progress(2 * total, 2 * total);
}
