/**
 * The contract between convertToStream (ops/) and the formats that can be
 * written front to back without seeking (formats/): the writer gets the
 * concatenated sources as one guest address space and yields the output
 * file's bytes in order.
 */
import type { Codecs } from './codecs.js';

/** The sources, concatenated, as a stream writer sees them. */
export interface StreamInput {
  /** Total guest bytes. */
  readonly size: number;
  /**
   * Guest bytes from `offset`; bytes past `size` read as zero. Throws
   * ImageError('aborted') instead of reading once the operation is cancelled.
   */
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Runs of guest bytes in order: `zero` ones read as zero and need no read. */
  extents(): AsyncIterable<{ offset: number; length: number; zero: boolean }>;
  /** Throws ImageError('aborted') once the operation is cancelled. */
  checkAborted(): void;
  /** Reports work done, in units the writer chooses (bytes of guest data processed). */
  progress(done: number, total: number): void;
}

/** Output options; a writer refuses the ones that make no sense for its format. */
export interface StreamTargetOptions {
  /** qcow2: cluster size, a power of two from 512 to 2 MiB. Default 64 KiB. */
  clusterSize?: number;
  /** qcow2: compress every data cluster. */
  compress?: boolean;
  /** qcow2: default zlib. */
  compressionType?: 'zlib' | 'zstd';
  /** qcow2 with compress: the level (a qimg extension; see OpenOptions.compressionLevel). */
  compressionLevel?: number;
  /** qcow2: 3 (compat 1.1, default) or 2 (compat 0.10). */
  version?: 2 | 3;
  /** qcow2: refcount width, a power of two up to 64 (16 with version 2). Default 16. */
  refcountBits?: number;
  /** qcow2: set the lazy refcounts compatible feature (version 3). */
  lazyRefcounts?: boolean;
  /**
   * Zero detection granularity, as convert's -S. qcow2 allocates whole
   * clusters: a cluster is stored when any byte in it is not zero. 0
   * allocates every cluster without looking. Default 4096.
   */
  sparseSize?: number;
  /** Reads (and compressions) in flight. Default 8. */
  parallel?: number;
  /**
   * qcow2 with compression: bytes of compressed clusters kept in memory
   * between the sizing pass and the output; clusters beyond it are
   * compressed again. Default 64 MiB.
   */
  memoryBudget?: number;
  /** Compressors (deflateRaw, zstdCompress). Required for compression. */
  codecs?: Codecs;
}

export type StreamWriter = (input: StreamInput, opts: StreamTargetOptions) => AsyncIterable<Uint8Array>;
