/**
 * `compression_level`: how hard compressed writes work. A qimg extension
 * (qemu-img always writes zlib at 6 and zstd at 3, and refuses the option);
 * the image does not record it, and any level decodes in any reader.
 */
import { ImageError } from '../errors.js';
import type { Codecs } from './codecs.js';
import { parseOptionList } from './options.js';

export type CompressionType = 'zlib' | 'zstd';

/** zstd's fastest ("negative") level and its strongest. */
const ZSTD_MIN_LEVEL = -131072;
const ZSTD_MAX_LEVEL = 22;

/** Throws unless `level` is one the compression type has: zlib 1..9, zstd 1..22 or negative (fast) levels. */
export function checkCompressionLevel(type: CompressionType, level: number): void {
  const ok =
    Number.isInteger(level) &&
    (type === 'zlib' ? level >= 1 && level <= 9 : level !== 0 && level >= ZSTD_MIN_LEVEL && level <= ZSTD_MAX_LEVEL);
  if (!ok) {
    const range = type === 'zlib' ? '1 to 9' : `1 to ${ZSTD_MAX_LEVEL}, or ${ZSTD_MIN_LEVEL} to -1 for faster ones`;
    throw new ImageError('bad-argument', `Parameter 'compression_level' must be ${range} for ${type} compression, not '${level}'`);
  }
}

/** Parses the -o value (an integer, possibly negative). */
export function parseCompressionLevel(text: string): number {
  if (!/^-?\d+$/.test(text)) throw new ImageError('bad-argument', `Parameter 'compression_level' expects an integer`);
  return Number(text);
}

/** Codecs whose compressors use `level`; decompression is unchanged. */
export function withCompressionLevel(codecs: Codecs, level: number | undefined): Codecs {
  if (level === undefined) return codecs;
  const { deflateRaw, zstdCompress } = codecs;
  return {
    ...codecs,
    deflateRaw: deflateRaw && ((src, limit) => deflateRaw(src, limit, level)),
    zstdCompress: zstdCompress && ((src, limit) => zstdCompress(src, limit, level)),
  };
}

/**
 * compression_level is not a creation option (the image does not record
 * it): it is taken out of an -o list, and applies to the writes a convert
 * makes. The rest of the list is returned as text (undefined when empty).
 */
export function splitCompressionLevel(text: string): { options: string | undefined; level: number | undefined } {
  const entries = parseOptionList(text);
  const given = entries.filter(([k]) => k === 'compression_level');
  if (given.length === 0) return { options: text, level: undefined };
  const rest = entries.filter(([k]) => k !== 'compression_level').map(([k, v]) => `${k}=${v.replaceAll(',', ',,')}`);
  return { options: rest.length ? rest.join(',') : undefined, level: parseCompressionLevel(given.at(-1)![1]) };
}
