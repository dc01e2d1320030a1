/**
 * Decompression and compression are injected, so the core stays free of
 * Node APIs: the Node entry point supplies zlib and zstd bindings; a browser
 * build can supply WebAssembly ones.
 */
/** For callers that give no codecs: compressed clusters then fail to read with a clear error, and nothing is compressed. */
export const NO_CODECS: Codecs = { inflateRaw: async () => false, zstdDecompress: async () => false };

export interface Codecs {
  /**
   * Inflate a raw DEFLATE stream (no zlib header) into exactly `out.length`
   * bytes. Input after the end of the stream is ignored. Returns false if
   * the stream is invalid or produces fewer bytes than `out.length`.
   */
  inflateRaw(src: Uint8Array, out: Uint8Array): Promise<boolean>;
  /**
   * Decode one or more concatenated zstd frames into exactly `out.length`
   * bytes (qemu's rules: the last frame must be complete when the output is
   * full; bytes after that are ignored). Returns false on any error.
   */
  zstdDecompress(src: Uint8Array, out: Uint8Array): Promise<boolean>;
  /** Raw DEFLATE as qemu writes it (window 12; level 6 unless given); null if it does not fit in `limit` bytes. */
  deflateRaw?(src: Uint8Array, limit: number, level?: number): Promise<Uint8Array | null>;
  /** One zstd frame (level 3 unless given); null if it does not fit in `limit` bytes. */
  zstdCompress?(src: Uint8Array, limit: number, level?: number): Promise<Uint8Array | null>;
}
