/**
 * Format probing by magic, as qemu does for the formats qimg knows:
 * qcow2 (magic and version >= 2), QED, and raw for everything else.
 * A format named by the caller is never probed.
 */
import type { ImageFormat } from './driver.js';

export const PROBE_BYTES = 512;

export function probeFormat(head: Uint8Array): ImageFormat {
  if (head.length >= 8) {
    const v = new DataView(head.buffer, head.byteOffset, head.length);
    if (v.getUint32(0) === 0x514649fb && v.getUint32(4) >= 2) return 'qcow2';
    if (v.getUint32(0, true) === 0x00444551) return 'qed';
  }
  return 'raw';
}

export function parseFormatName(name: string): ImageFormat | undefined {
  return name === 'qcow2' || name === 'qed' || name === 'raw' ? name : undefined;
}
