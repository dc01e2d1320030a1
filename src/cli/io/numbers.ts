/** qemu-io's number and pattern operands, with its parse-error lines. */
import { parseSize } from '../options.js';
import { out } from '../common.js';

/** BDRV_REQUEST_MAX_BYTES: the longest single request. */
export const MAX_REQUEST = 2147483136;

/** qemu-io's cvtnum: a size, or a negative errno-like code. */
export function cvtnum(s: string): number {
  const v = parseSize(s);
  if (v === undefined) return -22;
  if (v > Number.MAX_SAFE_INTEGER) return -34;
  return v;
}

export function cvtnumErr(rc: number, arg: string): void {
  if (rc === -22) out(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${arg}\n`);
  else if (rc === -34) out(`Parsing error: argument too large -- ${arg}\n`);
  else out(`Parsing error: ${arg}\n`);
}

/** The offset and count operands of read and discard, with qemu-io's messages; a negative errno on error. */
export function offsetAndCount([offArg, countArg]: [string, string]): [number, number] | number {
  const offset = cvtnum(offArg);
  if (offset < 0) {
    cvtnumErr(offset, offArg);
    return offset;
  }
  const count = cvtnum(countArg);
  if (count < 0) {
    cvtnumErr(count, countArg);
    return count;
  } else if (count > MAX_REQUEST) {
    out(`length cannot exceed ${MAX_REQUEST}, given ${countArg}\n`);
    return -22;
  }
  return [offset, count];
}

/**
 * The buffer lengths of a vectored request (readv, writev, aio_*): their
 * sum, or a negative errno after qemu-io's message. The total is bounded
 * as one request is.
 */
export function vectorLength(args: string[]): number {
  let total = 0;
  for (const arg of args) {
    const n = cvtnum(arg);
    if (n < 0) {
      cvtnumErr(n, arg);
      return n;
    }
    if (n > MAX_REQUEST) {
      out(`Argument '${arg}' exceeds maximum size ${MAX_REQUEST}\n`);
      return -22;
    }
    if (total + n > MAX_REQUEST) {
      out(`The total number of bytes exceed the maximum size ${MAX_REQUEST}\n`);
      return -22;
    }
    total += n;
  }
  return total;
}

/** strtol(arg, &end, 0) for 0..255. */
export function parsePattern(arg: string): number {
  let v: number;
  if (/^[+]?0[xX][0-9a-fA-F]+$/.test(arg)) v = parseInt(arg.replace('+', ''), 16);
  else if (/^[+]?0[0-7]*$/.test(arg)) v = parseInt(arg.replace('+', ''), 8);
  else if (/^[+-]?\d+$/.test(arg)) v = parseInt(arg, 10);
  else v = NaN;
  if (!(v >= 0 && v <= 255)) {
    out(`${arg} is not a valid pattern byte\n`);
    return -1;
  }
  return v;
}
