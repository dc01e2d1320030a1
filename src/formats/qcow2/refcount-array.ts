/**
 * The check's computed refcounts, one entry per host cluster (QEMU's
 * refcount_table in qcow2_check_refcounts), in the image's refcount width
 * (so overflow happens where QEMU's does).
 *
 * QEMU sizes one flat array from the file length, so a file sparse-extended
 * to tens of TiB costs gigabytes before a single table is read. Here the
 * entries live in pages allocated on the first non-zero write: memory
 * follows the clusters the image really references, holes cost nothing,
 * and a cap turns an image that references more than that into QEMU's
 * answer when its allocation fails (check error, "Cannot allocate memory")
 * instead of exhausting the process.
 */
import { CheckFailure } from './check-failure.js';
import { setEntryAt } from './refcounts.js';

type Page = Uint8Array | Uint16Array | Uint32Array | Float64Array;

/** Entries per page: small, so scattered references cannot amplify memory much. */
export const PAGE_ENTRIES = 4096;

/** Default cap on page memory; generous for any real image (1 GiB holds 2^29 16-bit refcounts). */
export const DEFAULT_REFCOUNT_MEMORY = 1 << 30;

export class RefcountArray {
  /** Pages by index; holes read as zero. */
  private pages: (Page | undefined)[] = [];
  private used = 0;
  private readonly entryBytes: number;
  /** Number of clusters covered (QEMU's nb_clusters). */
  size: number;
  readonly max: number;

  constructor(
    readonly order: number,
    size: number,
    /** Most bytes the pages may take before the check fails with ENOMEM. */
    readonly memoryLimit = DEFAULT_REFCOUNT_MEMORY,
  ) {
    this.max = order === 6 ? Number.MAX_SAFE_INTEGER : 2 ** 2 ** order - 1;
    this.size = size;
    this.entryBytes = order <= 3 ? 1 : order === 4 ? 2 : order === 5 ? 4 : 8;
  }

  /** Bytes held by pages now. */
  get memoryUsed(): number {
    return this.used;
  }

  private newPage(): Page {
    this.used += PAGE_ENTRIES * this.entryBytes;
    if (this.used > this.memoryLimit) throw new CheckFailure('Cannot allocate memory');
    if (this.order <= 3) return new Uint8Array(PAGE_ENTRIES);
    if (this.order === 4) return new Uint16Array(PAGE_ENTRIES);
    if (this.order === 5) return new Uint32Array(PAGE_ENTRIES);
    return new Float64Array(PAGE_ENTRIES);
  }

  get(k: number): number {
    if (k >= this.size) return 0;
    const p = Math.floor(k / PAGE_ENTRIES);
    const page = this.pages[p];
    return page ? page[k - p * PAGE_ENTRIES]! : 0;
  }

  /** Throws CheckFailure (ENOMEM) when a new page would pass the memory limit. */
  set(k: number, v: number): void {
    if (k >= this.size) this.resize(k + 1);
    const p = Math.floor(k / PAGE_ENTRIES);
    let page = this.pages[p];
    if (!page) {
      if (v === 0) return;
      page = this.pages[p] = this.newPage();
    }
    page[k - p * PAGE_ENTRIES] = v;
  }

  /** realloc_refcount_array: new entries are zero. */
  resize(n: number): void {
    if (n < this.size) {
      const first = Math.ceil(n / PAGE_ENTRIES);
      for (let p = first; p < this.pages.length; p++) this.drop(p);
      this.pages.length = Math.min(this.pages.length, first);
      const partial = this.pages[Math.floor(n / PAGE_ENTRIES)];
      if (partial && n % PAGE_ENTRIES !== 0) partial.fill(0, n % PAGE_ENTRIES);
    }
    this.size = n;
  }

  private drop(p: number): void {
    if (this.pages[p]) this.used -= PAGE_ENTRIES * this.entryBytes;
    this.pages[p] = undefined;
  }

  clear(): void {
    this.pages = [];
    this.used = 0;
  }

  /**
   * The first cluster at or after `k` whose entry may be non-zero (it lies
   * in an allocated page), or Infinity: lets callers skip holes in one step.
   */
  nextPossiblyUsed(k: number): number {
    if (k >= this.size) return Infinity;
    let p = Math.floor(k / PAGE_ENTRIES);
    if (this.pages[p]) return k;
    for (p++; p < this.pages.length; p++) if (this.pages[p]) return p * PAGE_ENTRIES < this.size ? p * PAGE_ENTRIES : Infinity;
    return Infinity;
  }

  /** Refcount block `bi` as it would be stored on disk. */
  encodeBlock(bi: number, clusterSize: number, perBlock: number): Uint8Array {
    const out = new Uint8Array(clusterSize);
    const start = bi * perBlock;
    const end = Math.min(this.size, start + perBlock);
    for (let k = this.nextPossiblyUsed(start); k < end; k = this.nextPossiblyUsed(k + 1)) {
      const v = this.get(k);
      if (v !== 0) setEntryAt(out, k - start, this.order, v);
    }
    return out;
  }
}
