/**
 * Format probing by magic, as qemu does for the formats qimg knows:
 * qcow2 (magic and version >= 2), QED, and raw for everything else.
 * A format named by the caller is never probed.
 */
import type { ImageFormat } from './driver.js';
import type { Storage } from '../io/storage.js';
import { findFormat, registeredFormats } from './format.js';

export const PROBE_BYTES = 512;

/** The registered format whose probe claims these first bytes; raw (which has no magic) otherwise. */
export function probeFormat(head: Uint8Array): ImageFormat {
  for (const name of registeredFormats()) if (findFormat(name)!.probe?.(head)) return name;
  return 'raw';
}

/** Probe the format of the image in `storage` from its first bytes. */
export async function probeStorage(storage: Storage): Promise<ImageFormat> {
  const head = new Uint8Array(Math.min(PROBE_BYTES, await storage.size()));
  await storage.read(head, 0);
  return probeFormat(head);
}

/** A format name the caller gave, if a registered format has it. */
export function parseFormatName(name: string): ImageFormat | undefined {
  return findFormat(name)?.name;
}

const ascii = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const startsWith = (head: Uint8Array, magic: Uint8Array, at = 0): boolean =>
  head.length >= at + magic.length && magic.every((b, i) => head[at + i] === b);

/**
 * Magic numbers QEMU's other format drivers probe for. qimg opens none of
 * these formats, but QEMU would: a guest that writes one of them into the
 * first sector of a probed raw image could make QEMU open the file as that
 * format next time (the reason qemu restricts writes to block 0).
 */
const FOREIGN: [string, Uint8Array, number][] = [
  ['qcow', Uint8Array.of(0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1), 0], // version 1 only
  ['luks', ascii('LUKS\xba\xbe'), 0],
  ['vmdk', ascii('KDMV'), 0],
  ['vmdk', ascii('COWD'), 0],
  ['vmdk', ascii('# Disk DescriptorFile'), 0],
  ['vpc', ascii('conectix'), 0],
  ['vhdx', ascii('vhdxfile'), 0],
  ['vdi', Uint8Array.of(0x7f, 0x10, 0xda, 0xbe), 0x40],
  ['parallels', ascii('WithoutFreeSpace'), 0],
  ['parallels', ascii('WithouFreSpacExt'), 0],
  ['bochs', ascii('Bochs Virtual HD Image'), 0],
  ['cloop', ascii('#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0'), 0],
];

/**
 * What QEMU would probe the first sector as, if not raw: one of qimg's
 * formats, or another QEMU format by its magic. Used to refuse writes that
 * would turn a probed raw image into something else.
 */
export function probeAsQemu(head: Uint8Array): string {
  const own = probeFormat(head);
  if (own !== 'raw') return own;
  return FOREIGN.find(([, magic, at]) => startsWith(head, magic, at))?.[0] ?? 'raw';
}
