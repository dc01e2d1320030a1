/**
 * Offsets are JS numbers: exact up to 2^53. Every 64-bit on-disk value goes
 * through readU64 so that anything larger is refused instead of silently
 * rounded. Hot paths decode table entries as two 32-bit halves instead.
 */
import { ImageError } from './errors.js';

export const MAX_SAFE_OFFSET = Number.MAX_SAFE_INTEGER;
const TWO_32 = 0x1_0000_0000;

/** Big- or little-endian u64 at `pos`, refused if above 2^53 - 1. */
export function readU64(view: DataView, pos: number, littleEndian: boolean, what: string): number {
  const hi = view.getUint32(littleEndian ? pos + 4 : pos, littleEndian);
  const lo = view.getUint32(littleEndian ? pos : pos + 4, littleEndian);
  if (hi > 0x1f_ffff) {
    throw new ImageError('unsupported', `${what} is too large (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}): offsets above 2^53 are not supported`);
  }
  return hi * TWO_32 + lo;
}

/** u64 as a bigint, for fields that are bit masks (feature bits). */
export function readU64Big(view: DataView, pos: number, littleEndian: boolean): bigint {
  return view.getBigUint64(pos, littleEndian);
}

export function writeU64(view: DataView, pos: number, value: number, littleEndian: boolean): void {
  const hi = Math.floor(value / TWO_32);
  const lo = value >>> 0;
  view.setUint32(littleEndian ? pos + 4 : pos, hi, littleEndian);
  view.setUint32(littleEndian ? pos : pos + 4, lo, littleEndian);
}

export const alignDown = (v: number, a: number): number => v - (v % a);
export const alignUp = (v: number, a: number): number => {
  const r = v % a;
  return r === 0 ? v : v + (a - r);
};
export const isAligned = (v: number, a: number): boolean => v % a === 0;
export const divCeil = (v: number, d: number): number => Math.ceil(v / d);
export const isPowerOfTwo = (v: number): boolean => v > 0 && Number.isInteger(Math.log2(v));

const SIZE_SUFFIXES: Record<string, number> = { B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50, E: 2 ** 60 };

/**
 * qemu's size syntax (qemu_strtosz): a decimal number, possibly with a
 * fraction, or a 0x hex integer, then an optional suffix b/k/M/G/T/P/E
 * (any case; powers of 1024; `defaultSuffix` when none is given). Returns
 * undefined for anything else, including negative numbers.
 */
export function parseSize(text: string, defaultSuffix = 'B'): number | undefined {
  const m = /^\s*(0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?|\.\d+)([bBkKmMgGtTpPeE]?)$/.exec(text);
  if (!m) return undefined;
  const [, num = '', suffix = ''] = m;
  const mul = SIZE_SUFFIXES[(suffix || defaultSuffix).toUpperCase()]!;
  const isHex = /^0[xX]/.test(num);
  if (isHex && suffix === '' && num.length > 2 + 13) return undefined;
  const value = isHex ? parseInt(num, 16) : Number(num);
  if (!isHex && mul === 1 && !Number.isInteger(value)) return undefined; // a fraction (1.5, not 1024.0) needs a unit
  const bytes = Math.floor(value * mul);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}
