/** Small formatting helpers so messages match QEMU's printf output exactly. */

/** printf("%#x"): "0" for zero, "0x..." otherwise. */
export function hexAlt(v: number | bigint): string {
  if (v === 0 || v === 0n) return '0';
  return `0x${v.toString(16)}`;
}

/** A C string read from a fixed buffer: stops at the first NUL, as QEMU's strings do. */
export function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return utf8(nul < 0 ? bytes : bytes.subarray(0, nul));
}

const decoder = new TextDecoder('utf-8');
export function utf8(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}
