/** qemu-io's result lines: the timing report and the hex dump of -v. */
import { cvtstr, timestr, toFixedC } from '../format.js';

/** qemu-io's dump_buffer: 16 bytes a line, isalnum() characters shown. */
export function dumpBuffer(buf: Uint8Array, offset: number): string {
  let s = '';
  for (let i = 0; i < buf.length; i += 16) {
    const row = buf.subarray(i, Math.min(i + 16, buf.length));
    s += (offset + i).toString(16).padStart(8, '0') + ':  ';
    for (const b of row) s += b.toString(16).padStart(2, '0') + ' ';
    s += ' ';
    for (const b of row) s += (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) ? String.fromCharCode(b) : '.';
    s += '\n';
  }
  return s;
}

/** qemu-io's print_report. */
export function report(op: string, seconds: number, offset: number, count: number, total: number, cnt: number, parsable: boolean): string {
  const secs = Math.max(seconds, 1e-9);
  if (parsable) {
    return `${total},${cnt},${timestr(seconds, true)},${toFixedC(total / secs, 3)},${toFixedC(cnt / secs, 3)}\n`;
  }
  return `${op} ${total}/${count} bytes at offset ${offset}\n${cvtstr(total)}, ${cnt} ops; ${timestr(seconds)} (${cvtstr(total / secs)}/sec and ${toFixedC(cnt / secs, 4)} ops/sec)\n`;
}

/** Seconds since `t1` (a performance.now() reading). */
export const since = (t1: number): number => (performance.now() - t1) / 1000;
