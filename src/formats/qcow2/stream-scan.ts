/**
 * The first pass of a streamed qcow2 (stream-writer.ts): which guest
 * clusters get host space, and with compression how big each payload is,
 * since the L2 tables that name the payloads' offsets come before the data.
 * Compressed payloads are kept in memory up to a budget (a prefix, in guest
 * order, so the output pass consumes and frees them front to back); the
 * rest are compressed again when emitted.
 */
import { orderedMap } from '../../block/ordered.js';
import type { StreamInput } from '../../block/stream-target.js';
import { AllocationList, l2EntriesOf } from './stream-layout.js';

/** Bytes read first from each cluster to find it holds data, and the cluster size from which that pays. */
const PROBE = 4096;
const PROBE_MIN_CLUSTER = 32768;

export type Compress = (cluster: Uint8Array) => Promise<Uint8Array | null>;

export interface ScanConfig {
  clusterSize: number;
  /** Clusters of the virtual size. */
  clusters: number;
  /** 0: allocate every cluster without looking. */
  sparseSize: number;
  compress: Compress | undefined;
  parallel: number;
  memoryBudget: number;
  /** Bytes read per request. */
  chunkBytes: number;
}

export interface Scan {
  alloc: AllocationList;
  l2Tables: number;
  kept: KeptPayloads;
}

/**
 * Compressed payloads of allocation indices [0, upTo), in one arena of
 * large blocks, read back in order exactly once.
 */
export class KeptPayloads {
  private readonly blocks: (Uint8Array | undefined)[] = [];
  private fill = 0;
  private bytes = 0;
  private full = false;
  /** Allocation indices below this have their payload (if compressed) here. */
  upTo = 0;
  private readBlock = 0;
  private readPos = 0;

  constructor(private readonly budget: number, private readonly blockSize: number) {}

  /** Keep `payload` for allocation index `index` if the budget allows and nothing before was dropped. */
  offer(index: number, payload: Uint8Array | undefined): void {
    if (this.full || index !== this.upTo) return;
    if (payload) {
      if (this.bytes + payload.length > this.budget) {
        this.full = true;
        return;
      }
      let block = this.blocks[this.blocks.length - 1];
      if (!block || this.fill + payload.length > block.length) {
        block = new Uint8Array(Math.max(this.blockSize, payload.length));
        this.blocks.push(block);
        this.fill = 0;
      }
      block.set(payload, this.fill);
      this.fill += payload.length;
      this.bytes += payload.length;
    }
    this.upTo = index + 1;
  }

  /** The next kept payload, `length` bytes; blocks are released once read past. */
  take(length: number): Uint8Array {
    let block = this.blocks[this.readBlock]!;
    if (this.readPos + length > block.length || (this.readBlock === this.blocks.length - 1 && this.readPos + length > this.fill)) {
      // A payload never straddles blocks: it went to the next one.
      this.blocks[this.readBlock] = undefined;
      this.readBlock++;
      this.readPos = 0;
      block = this.blocks[this.readBlock]!;
    }
    const out = block.subarray(this.readPos, this.readPos + length);
    this.readPos += length;
    return out;
  }

  get heldBytes(): number {
    return this.bytes;
  }
}

interface Span {
  first: number;
  count: number;
  /** The clusters hold data to read; otherwise they read as zero. */
  data: boolean;
}

/** Cluster spans in order: those touching data, and (for -S 0) the zero ones between. */
async function* spans(input: StreamInput, cs: number, clusters: number, withZero: boolean, maxCount: number): AsyncGenerator<Span> {
  let pending: { first: number; end: number } | undefined;
  let next = 0;
  function* emit(first: number, end: number, data: boolean): Generator<Span> {
    if (withZero && first > next) yield* split(next, first, false);
    yield* split(Math.max(first, next), end, data);
    next = Math.max(next, end);
  }
  function* split(first: number, end: number, data: boolean): Generator<Span> {
    for (let c = first; c < end; c += maxCount) yield { first: c, count: Math.min(maxCount, end - c), data };
  }
  for await (const e of input.extents()) {
    if (e.zero) continue;
    const first = Math.floor(e.offset / cs);
    const end = Math.min(clusters, Math.ceil((e.offset + e.length) / cs));
    if (pending && first <= pending.end) {
      pending.end = Math.max(pending.end, end);
      continue;
    }
    if (pending) yield* emit(pending.first, pending.end, true);
    pending = { first, end };
  }
  if (pending) yield* emit(pending.first, pending.end, true);
  if (withZero) yield* emit(clusters, clusters, false);
}

interface ClusterResult {
  cluster: number;
  /** Compressed payload; undefined for a plain cluster. */
  payload?: Uint8Array;
}

function isZero(buf: Uint8Array): boolean {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

/** Whether the cluster holds any non-zero byte. Clusters are multiples of 512 bytes and buffers are aligned. */
export const clusterIsZero = isZero;

export async function scanAllocation(input: StreamInput, cfg: ScanConfig): Promise<Scan> {
  const cs = cfg.clusterSize;
  const alloc = new AllocationList(cfg.compress !== undefined);
  const kept = new KeptPayloads(cfg.memoryBudget, Math.max(4 << 20, cs));
  const perL2 = l2EntriesOf(cs);
  let l2Tables = 0;
  let lastL2 = -1;
  const add = (r: ClusterResult): void => {
    alloc.push(r.cluster, r.payload?.length ?? 0);
    kept.offer(alloc.length - 1, r.payload);
    const t = Math.floor(r.cluster / perL2);
    if (t !== lastL2) {
      l2Tables++;
      lastL2 = t;
    }
  };
  const total = input.size;
  const fullyAllocate = cfg.sparseSize === 0;

  if (fullyAllocate && !cfg.compress) {
    // Every cluster is stored as it reads; nothing to look at.
    for (let c = 0; c < cfg.clusters; c++) add({ cluster: c });
    input.progress(total, 2 * total);
    return { alloc, l2Tables, kept };
  }

  const perChunk = Math.max(1, Math.floor(cfg.chunkBytes / cs));
  let zeroPayload: Promise<Uint8Array | null> | undefined;
  const compress = async (buf: Uint8Array): Promise<Uint8Array | null> => {
    if (!isZero(buf)) return cfg.compress!(buf);
    zeroPayload ??= cfg.compress!(new Uint8Array(cs));
    return zeroPayload;
  };
  const free: Uint8Array[] = [];
  const examine = async (span: Span): Promise<ClusterResult[]> => {
    if (!span.data) {
      // -S 0 with compression: zero clusters are stored too, all with the same payload.
      const payload = (await compress(new Uint8Array(cs))) ?? undefined;
      return Array.from({ length: span.count }, (_, i) => ({ cluster: span.first + i, payload }));
    }
    // Buffers are reused: a fresh megabyte per read would cost a page fault per 4 KiB.
    const buf = free.pop()?.subarray(0, span.count * cs) ?? new Uint8Array(perChunk * cs).subarray(0, span.count * cs);
    try {
      return await examineData(span, buf);
    } finally {
      free.push(new Uint8Array(buf.buffer));
    }
  };
  const examineData = async (span: Span, buf: Uint8Array): Promise<ClusterResult[]> => {
    if (!cfg.compress && cs >= PROBE_MIN_CLUSTER) return probeSpan(span, buf);
    await input.read(span.first * cs, buf);
    const jobs: Promise<ClusterResult | undefined>[] = [];
    for (let i = 0; i < span.count; i++) {
      const cluster = buf.subarray(i * cs, (i + 1) * cs);
      if (!fullyAllocate && isZero(cluster)) continue;
      const c = span.first + i;
      if (!cfg.compress) jobs.push(Promise.resolve({ cluster: c }));
      // Every cluster's compression is started at once: they run on the thread pool.
      else jobs.push(compress(cluster).then((p) => ({ cluster: c, payload: p ?? undefined })));
    }
    return (await Promise.all(jobs)).filter((r): r is ClusterResult => r !== undefined);
  };
  /**
   * Without compression only "any non-zero byte?" matters: the head of each
   * cluster usually answers it, so most of the data is read once, not twice.
   * Clusters whose head is all zero are read whole.
   */
  const probeSpan = async (span: Span, buf: Uint8Array): Promise<ClusterResult[]> => {
    const heads = await Promise.all(
      Array.from({ length: span.count }, async (_, i) => {
        const head = buf.subarray(i * cs, i * cs + PROBE);
        await input.read((span.first + i) * cs, head);
        if (!isZero(head)) return true;
        const rest = buf.subarray(i * cs + PROBE, (i + 1) * cs);
        await input.read((span.first + i) * cs + PROBE, rest);
        return !isZero(rest);
      }),
    );
    const out: ClusterResult[] = [];
    heads.forEach((data, i) => {
      if (data) out.push({ cluster: span.first + i });
    });
    return out;
  };
  for await (const results of orderedMap(spans(input, cs, cfg.clusters, fullyAllocate, perChunk), cfg.parallel, examine)) {
    input.checkAborted();
    for (const r of results) add(r);
    const last = results[results.length - 1];
    if (last) input.progress(Math.min(total, (last.cluster + 1) * cs), 2 * total);
  }
  input.progress(total, 2 * total);
  return { alloc, l2Tables, kept };
}
