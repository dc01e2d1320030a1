/**
 * The LUKS1 on-disk header (592 bytes, big-endian; cryptsetup's LUKS1 spec)
 * and the checks qemu makes when it opens one, in qemu's order and words, so
 * a hostile header fails with one clear error before any key derivation.
 */
import { ImageError } from '../errors.js';
import { readBE32, writeBE32 } from './block-cipher.js';
import { luksAlgorithms } from './luks-spec.js';

export const LUKS_MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe] as const; // "LUKS\xba\xbe"
export const LUKS_HEADER_SIZE = 592;
export const LUKS_SLOTS = 8;
export const LUKS_STRIPES = 4000;
export const LUKS_SLOT_ENABLED = 0x00ac71f3;
export const LUKS_SLOT_DISABLED = 0x0000dead;
export const LUKS_DIGEST_SIZE = 20;
export const LUKS_SALT_SIZE = 32;
/** Key material starts at 4 KiB; everything before is header (qemu's layout and its overlap rule). */
export const LUKS_HEADER_SECTORS = 8;
export const LUKS_SECTOR = 512;
/**
 * The most PBKDF2 iterations qimg will run for one key slot or the master-key
 * digest. qemu has no bound and spins for hours on 0xffffffff; real volumes use
 * at most a few million (iter-time 2000 ms on a fast host), so 2^26 leaves
 * room for long iter-times while bounding a hostile header to about a minute.
 */
export const MAX_PBKDF2_ITERATIONS = 1 << 26;
/** The largest master key any supported cipher takes (256-bit XTS). */
const MAX_KEY_BYTES = 64;

export interface LuksKeySlot {
  active: boolean;
  iterations: number;
  salt: Uint8Array; // 32 bytes
  keyMaterialOffsetSectors: number;
  stripes: number;
}

export interface LuksHeader {
  version: number;
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  payloadOffsetSectors: number;
  keyBytes: number;
  mkDigest: Uint8Array; // 20 bytes
  mkDigestSalt: Uint8Array; // 32 bytes
  mkDigestIter: number;
  uuid: string;
  slots: LuksKeySlot[]; // 8
}

const bad = (msg: string): ImageError => new ImageError('invalid', msg);

/** Sectors one key slot's anti-forensic material occupies, rounded to 4 KiB as qemu lays them out. */
export function luksSplitKeySectors(keyBytes: number, stripes: number): number {
  const sectors = Math.ceil((keyBytes * stripes) / LUKS_SECTOR);
  return Math.ceil(sectors / LUKS_HEADER_SECTORS) * LUKS_HEADER_SECTORS;
}

function cString(buf: Uint8Array, at: number, size: number, what: string): string {
  const field = buf.subarray(at, at + size);
  const end = field.indexOf(0);
  if (end < 0) throw bad(`LUKS header ${what} is not NUL terminated`);
  let s = '';
  for (let i = 0; i < end; i++) s += String.fromCharCode(field[i]!);
  return s;
}

function putString(buf: Uint8Array, at: number, size: number, s: string, what: string): void {
  if (s.length >= size) throw new ImageError('bad-argument', `LUKS ${what} '${s}' is too long`);
  for (let i = 0; i < s.length; i++) buf[at + i] = s.charCodeAt(i) & 0xff;
}

/** Magic and version first: what decides whether this is a LUKS1 volume at all. */
export function isLuksHeader(buf: Uint8Array): boolean {
  return buf.length >= LUKS_HEADER_SIZE && LUKS_MAGIC.every((b, i) => buf[i] === b);
}

/**
 * Decode and check the header's layout (qemu's check_header): magic, version,
 * NUL-terminated names, payload and key slots inside their areas and apart,
 * 4000 stripes, non-zero and bounded iteration counts. Algorithm names are
 * checked by luksCipherSpec (luks-spec.ts).
 */
export function decodeLuksHeader(buf: Uint8Array): LuksHeader {
  if (!isLuksHeader(buf)) throw bad('Volume is not in LUKS format');
  const version = (buf[6]! << 8) | buf[7]!;
  if (version !== 1) throw new ImageError('unsupported', `LUKS version ${version} is not supported`);
  const cipherName = cString(buf, 8, 32, 'cipher name');
  const cipherMode = cString(buf, 40, 32, 'cipher mode');
  const hashSpec = cString(buf, 72, 32, 'hash spec');
  const slots: LuksKeySlot[] = [];
  const slotStates: number[] = [];
  for (let i = 0; i < LUKS_SLOTS; i++) {
    const o = 208 + i * 48;
    slotStates.push(readBE32(buf, o));
    slots.push({
      active: readBE32(buf, o) === LUKS_SLOT_ENABLED,
      iterations: readBE32(buf, o + 4),
      salt: buf.slice(o + 8, o + 40),
      keyMaterialOffsetSectors: readBE32(buf, o + 40),
      stripes: readBE32(buf, o + 44),
    });
  }
  const h: LuksHeader = {
    version,
    cipherName,
    cipherMode,
    hashSpec,
    payloadOffsetSectors: readBE32(buf, 104),
    keyBytes: readBE32(buf, 108),
    mkDigest: buf.slice(112, 132),
    mkDigestSalt: buf.slice(132, 164),
    mkDigestIter: readBE32(buf, 164),
    uuid: cString(buf, 168, 40, 'uuid'),
    slots,
  };
  // An absurd key size is reported as the unsupported algorithm it names
  // (what qemu reports, its u32 area arithmetic having wrapped to zero).
  if (h.keyBytes > MAX_KEY_BYTES) luksAlgorithms(h);
  checkLuksLayout(h, slotStates);
  return h;
}

function checkIterations(n: number, what: string): void {
  if (n > MAX_PBKDF2_ITERATIONS) {
    throw new ImageError('unsupported', `${what} iteration count ${n} is larger than the limit of ${MAX_PBKDF2_ITERATIONS}`);
  }
}

function checkLuksLayout(h: LuksHeader, slotStates?: number[]): void {
  if (h.payloadOffsetSectors < LUKS_HEADER_SECTORS) throw bad('LUKS payload is overlapping with the header');
  if (h.mkDigestIter === 0) throw bad('LUKS key iteration count is zero');
  checkIterations(h.mkDigestIter, 'LUKS key');
  const area = (i: number): [number, number] => {
    const s = h.slots[i]!;
    return [s.keyMaterialOffsetSectors, s.keyMaterialOffsetSectors + luksSplitKeySectors(h.keyBytes, s.stripes)];
  };
  for (let i = 0; i < LUKS_SLOTS; i++) {
    const s = h.slots[i]!;
    const state = slotStates?.[i] ?? (s.active ? LUKS_SLOT_ENABLED : LUKS_SLOT_DISABLED);
    if (state !== LUKS_SLOT_ENABLED && state !== LUKS_SLOT_DISABLED) {
      throw bad(`Keyslot ${i} state (active/disable) is corrupted`);
    }
    if (s.active && s.iterations === 0) throw bad(`Keyslot ${i} iteration count is zero`);
    if (s.active) checkIterations(s.iterations, `Keyslot ${i}`);
    if (s.stripes !== LUKS_STRIPES) throw bad(`Keyslot ${i} is corrupted (stripes ${s.stripes} != ${LUKS_STRIPES})`);
    const [start, end] = area(i);
    if (start < LUKS_HEADER_SECTORS) throw bad(`Keyslot ${i} is overlapping with the LUKS header`);
    if (end > h.payloadOffsetSectors) throw bad(`Keyslot ${i} is overlapping with the encrypted payload`);
    for (let j = i + 1; j < LUKS_SLOTS; j++) {
      const [s2, e2] = area(j);
      if (start < e2 && s2 < end) throw bad(`Keyslots ${i} and ${j} are overlapping in the header`);
    }
  }
}

export function encodeLuksHeader(h: LuksHeader): Uint8Array {
  const buf = new Uint8Array(LUKS_HEADER_SIZE);
  buf.set(LUKS_MAGIC, 0);
  buf[6] = h.version >>> 8;
  buf[7] = h.version & 0xff;
  putString(buf, 8, 32, h.cipherName, 'cipher name');
  putString(buf, 40, 32, h.cipherMode, 'cipher mode');
  putString(buf, 72, 32, h.hashSpec, 'hash spec');
  writeBE32(buf, 104, h.payloadOffsetSectors);
  writeBE32(buf, 108, h.keyBytes);
  buf.set(h.mkDigest.subarray(0, LUKS_DIGEST_SIZE), 112);
  buf.set(h.mkDigestSalt.subarray(0, LUKS_SALT_SIZE), 132);
  writeBE32(buf, 164, h.mkDigestIter);
  putString(buf, 168, 40, h.uuid, 'uuid');
  h.slots.forEach((s, i) => {
    const o = 208 + i * 48;
    writeBE32(buf, o, s.active ? LUKS_SLOT_ENABLED : LUKS_SLOT_DISABLED);
    writeBE32(buf, o + 4, s.iterations);
    buf.set(s.salt.subarray(0, LUKS_SALT_SIZE), o + 8);
    writeBE32(buf, o + 40, s.keyMaterialOffsetSectors);
    writeBE32(buf, o + 44, s.stripes);
  });
  return buf;
}
