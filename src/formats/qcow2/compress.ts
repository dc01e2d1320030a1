/**
 * Compressed clusters (spec: Compressed Clusters Descriptor; qemu-behaviour
 * §5): read the csize bytes the descriptor names, decompress exactly one
 * cluster with the image's compression type. The last cluster stays cached
 * so sequential partial reads decompress it once.
 */
import type { Codecs } from '../../block/codecs.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import * as C from './constants.js';
import { decodeCompressed } from './l2.js';

export class Decompressor {
  private readonly storage: Storage;
  private readonly clusterBits: number;
  private readonly compressionType: number;
  private readonly codecs: Codecs;
  private last: { hostOffset: number; csize: number; data: Promise<Uint8Array> } | undefined;

  constructor(storage: Storage, clusterBits: number, compressionType: number, codecs: Codecs) {
    this.storage = storage;
    this.clusterBits = clusterBits;
    this.compressionType = compressionType;
    this.codecs = codecs;
  }

  /** Forget the cached cluster: its host bytes may be reused by a write. */
  invalidate(): void {
    this.last = undefined;
  }

  /** The decompressed cluster for the descriptor words (do not modify the result). */
  cluster(hi: number, lo: number): Promise<Uint8Array> {
    const d = decodeCompressed(hi, lo, this.clusterBits);
    const last = this.last;
    if (last && last.hostOffset === d.hostOffset && last.csize === d.csize) return last.data;
    const data = this.decompress(d.hostOffset, d.csize);
    const entry = { hostOffset: d.hostOffset, csize: d.csize, data };
    this.last = entry;
    data.catch(() => {
      if (this.last === entry) this.last = undefined;
    });
    return data;
  }

  private async decompress(hostOffset: number, csize: number): Promise<Uint8Array> {
    // csize is at most two clusters (sector count field is cluster_bits - 8 bits wide).
    const src = new Uint8Array(csize);
    await this.storage.read(src, hostOffset); // past EOF reads as zero, as in QEMU
    const out = new Uint8Array(2 ** this.clusterBits);
    const ok =
      this.compressionType === C.COMPRESSION_ZSTD ? await this.codecs.zstdDecompress(src, out) : await this.codecs.inflateRaw(src, out);
    if (!ok) {
      // QEMU returns EIO without a message; qemu-io prints "read failed: Input/output error".
      throw new ImageError('io', 'Input/output error', {
        cause: new Error(`compressed cluster at host offset ${hostOffset} (${csize} bytes) does not decompress to one cluster`),
      });
    }
    return out;
  }
}
