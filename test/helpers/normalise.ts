/**
 * The few parts of qemu-img / qemu-io output that legitimately differ between
 * two runs on the same image, and how the byte comparisons neutralise them.
 * Each rewrite touches only the varying value, in place, so key order,
 * spacing and every other byte are still compared; it is applied to both
 * outputs, so a member one tool prints and the other does not still fails.
 */

/**
 * `"actual-size": N` in info JSON (at any depth: --backing-chain prints one
 * per image). It is the host's disk usage of the file (st_blocks), which
 * depends on how the file was written and on the file system, not on what the
 * image contains.
 */
export function maskActualSize(json: string): string {
  return json.replace(/^(\s*"actual-size": )\d+(,?)$/gm, '$1N$2');
}

/** `disk size: ...` in human info: the same host disk usage as actual-size, formatted. */
export function maskDiskSize(text: string): string {
  return text.replace(/^disk size: .*$/gm, 'disk size: N');
}

/**
 * qemu-io's per-command statistics line, `4 KiB, 1 ops; 00.00 sec (X MiB/sec
 * and Y ops/sec)`: elapsed time and rates are wall-clock measurements. The
 * byte and op counts before the `;` are kept.
 */
export function maskIoTiming(text: string): string {
  return text.replace(/^([0-9.]+ (?:bytes|KiB|MiB|GiB|TiB|PiB|EiB), \d+ ops); .*$/gm, '$1; T');
}
