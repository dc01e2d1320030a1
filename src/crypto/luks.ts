/**
 * LUKS1 volumes: parse and write the header, unlock a key slot with a
 * passphrase, and build a new volume as qemu-img create does.
 */
import { ImageError } from '../errors.js';
import { afMerge, afSplit } from './af.js';
import {
  decodeLuksHeader,
  encodeLuksHeader,
  LUKS_DIGEST_SIZE,
  LUKS_HEADER_SECTORS,
  LUKS_SALT_SIZE,
  LUKS_SECTOR,
  LUKS_SLOTS,
  LUKS_STRIPES,
  luksSplitKeySectors,
  MAX_PBKDF2_ITERATIONS,
  type LuksHeader,
  type LuksKeySlot,
} from './luks-header.js';
import { luksAlgorithms, luksNames } from './luks-spec.js';
import { measurePbkdf2Rate } from './portable.js';
import { digestLength, type CryptoProvider, type HashAlg } from './provider.js';
import { cipherKeyLength, validateCipherSpec, type CipherSpec, type SectorCipher } from './sector-cipher.js';

export type { LuksHeader, LuksKeySlot } from './luks-header.js';
export { MAX_PBKDF2_ITERATIONS } from './luks-header.js';
export { luksAlgorithms } from './luks-spec.js';
export { amendLuksSlots, type LuksAmendOptions, type LuksAmendResult } from './luks-amend.js';

/** Decode a LUKS1 header and check it as qemu does on open (layout, then algorithm names). */
export function parseLuksHeader(buf: Uint8Array): LuksHeader {
  const h = decodeLuksHeader(buf);
  luksAlgorithms(h);
  return h;
}

export function serializeLuksHeader(h: LuksHeader): Uint8Array {
  return encodeLuksHeader(h);
}

export type ReadAt = (offset: number, length: number) => Promise<Uint8Array>;

export interface UnlockedLuks {
  masterKey: Uint8Array;
  spec: CipherSpec;
  cipher: SectorCipher;
  slot: number;
}

export const badSecret = (): ImageError => new ImageError('bad-secret', 'Invalid password, cannot unlock any keyslot');

function checkKeyFits(spec: CipherSpec, keyBytes: number): void {
  if (spec.mode === 'xts' && keyBytes % 2 !== 0) {
    throw new ImageError('invalid', 'XTS cipher key length should be a multiple of 2');
  }
  validateCipherSpec(spec);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** Whole sectors holding `bytes` bytes: sector ciphers work on whole sectors. */
const roundToSectors = (bytes: number): number => Math.ceil(bytes / LUKS_SECTOR) * LUKS_SECTOR;

/** Decrypt one slot's material and return the master key if the passphrase opens it. */
async function tryKeySlot(
  h: LuksHeader,
  slot: LuksKeySlot,
  index: number,
  alg: { spec: CipherSpec; hash: HashAlg },
  passphrase: Uint8Array,
  readAt: ReadAt,
  p: CryptoProvider,
): Promise<Uint8Array | undefined> {
  const splitLength = h.keyBytes * slot.stripes;
  const material = await readAt(slot.keyMaterialOffsetSectors * LUKS_SECTOR, roundToSectors(splitLength));
  if (material.length < splitLength) {
    throw new ImageError('invalid', `Keyslot ${index} key material lies past the end of the volume`);
  }
  const padded = material.length % LUKS_SECTOR === 0 ? material.slice() : copyPadded(material);
  const slotKey = await p.pbkdf2(alg.hash, passphrase, slot.salt, slot.iterations, h.keyBytes);
  await p.sectorCipher(alg.spec, slotKey).decrypt(0, padded);
  const candidate = afMerge(alg.hash, p.digest.bind(p), padded, h.keyBytes, slot.stripes);
  const digest = await p.pbkdf2(alg.hash, candidate, h.mkDigestSalt, h.mkDigestIter, LUKS_DIGEST_SIZE);
  return equalBytes(digest, h.mkDigest) ? candidate : undefined;
}

/** Whether `passphrase` opens key slot `index` (the master-key digest matches). */
export async function slotOpensWith(
  h: LuksHeader,
  index: number,
  alg: { spec: CipherSpec; hash: HashAlg },
  passphrase: Uint8Array,
  readAt: ReadAt,
  p: CryptoProvider,
): Promise<boolean> {
  const slot = h.slots[index]!;
  return slot.active && (await tryKeySlot(h, slot, index, alg, passphrase, readAt, p)) !== undefined;
}

function copyPadded(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(roundToSectors(b.length));
  out.set(b);
  return out;
}

/**
 * Try each active slot with the passphrase; returns the master key and the
 * payload cipher, or throws ImageError('bad-secret', qemu's "Invalid password,
 * cannot unlock any keyslot"). `readAt` reads bytes relative to the LUKS
 * header start.
 */
export async function unlockLuks(h: LuksHeader, passphrase: Uint8Array, readAt: ReadAt, p: CryptoProvider): Promise<UnlockedLuks> {
  const alg = luksAlgorithms(h);
  checkKeyFits(alg.spec, h.keyBytes);
  checkCipherAvailable(p, alg.spec);
  for (let i = 0; i < LUKS_SLOTS; i++) {
    const slot = h.slots[i]!;
    if (!slot.active) continue;
    const masterKey = await tryKeySlot(h, slot, i, alg, passphrase, readAt, p);
    if (masterKey) return { masterKey, spec: alg.spec, cipher: p.sectorCipher(alg.spec, masterKey), slot: i };
  }
  throw badSecret();
}

export interface LuksCreateOptions {
  /** Default aes-256. */
  cipherAlg?: CipherSpec['alg'];
  /** Default xts. */
  cipherMode?: CipherSpec['mode'];
  /** Default plain64. */
  ivgenAlg?: CipherSpec['ivgen'];
  /** Hash for essiv; default sha256 when ivgenAlg is essiv. */
  ivgenHashAlg?: HashAlg;
  /** PBKDF2 and anti-forensic hash; default sha256. */
  hashAlg?: HashAlg;
  /** Milliseconds PBKDF2 should take to unlock the slot (qemu's iter-time); default 2000. */
  iterTime?: number;
  /** Fixed iteration counts instead of timing PBKDF2 (tests, reproducible volumes). */
  iterations?: { slot: number; masterKey: number };
  /** The volume UUID; default a random version-4 UUID. */
  uuid?: string;
}

/**
 * Build the provider's cipher for `spec` with a dummy key, so that a cipher
 * the provider cannot run (CAST5 on Node without OpenSSL's legacy provider)
 * fails before a key is derived or a file is created or written.
 */
export function checkCipherAvailable(p: CryptoProvider, spec: CipherSpec): void {
  p.sectorCipher(spec, new Uint8Array(cipherKeyLength(spec)));
}

export function luksCreateSpec(opts: LuksCreateOptions): CipherSpec {
  const spec: CipherSpec = { alg: opts.cipherAlg ?? 'aes-256', mode: opts.cipherMode ?? 'xts', ivgen: opts.ivgenAlg ?? 'plain64' };
  if (spec.ivgen === 'essiv') spec.ivgenHash = opts.ivgenHashAlg ?? 'sha256';
  else if (opts.ivgenHashAlg) spec.ivgenHash = opts.ivgenHashAlg;
  validateCipherSpec(spec);
  return spec;
}

function randomUuid(p: CryptoProvider): string {
  const b = p.randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const UINT64_MAX = 2n ** 64n - 1n;
const UINT32_MAX = 0xffffffff;
/** qemu appends strerror(ERANGE) to its overflow messages. */
const ERANGE_TEXT = 'Numerical result out of range';

/**
 * Iterations for `iterTime` ms at the measured rate, never fewer than 1000
 * (qemu's floor). As qemu scales it: the rate per second times iter-time
 * must fit 64 bits, and the count 32 bits (qemu's words for both); qimg
 * then caps it lower (MAX_PBKDF2_ITERATIONS).
 */
export function iterationsFor(ratePerMs: number, iterTime: number, divisor = 1): number {
  const perSecond = BigInt(Math.floor(ratePerMs * 1000));
  const time = BigInt(Math.floor(iterTime));
  if (time > 0n && perSecond > UINT64_MAX / time) {
    throw new ImageError('bad-argument', `PBKDF iterations ${perSecond} too large to scale: ${ERANGE_TEXT}`);
  }
  const scaled = (perSecond * time) / 1000n / BigInt(divisor);
  if (scaled > BigInt(UINT32_MAX)) {
    throw new ImageError('bad-argument', `PBKDF iterations ${scaled} larger than ${UINT32_MAX}: ${ERANGE_TEXT}`);
  }
  const n = Math.max(1000, Number(scaled));
  if (n > MAX_PBKDF2_ITERATIONS) {
    throw new ImageError('bad-argument', `Too many password hash iterations for LUKS volume (${n} > ${MAX_PBKDF2_ITERATIONS})`);
  }
  return n;
}

/** Digest-sized blocks PBKDF2 computes for `length` bytes of output. */
export function pbkdf2Blocks(hash: HashAlg, length: number): number {
  return Math.ceil(length / digestLength(hash));
}

export async function pbkdf2Rate(p: CryptoProvider, hash: HashAlg): Promise<number> {
  if (p.pbkdf2Rate) return p.pbkdf2Rate(hash);
  return measurePbkdf2Rate(p.pbkdf2.bind(p), hash);
}

/** Split, encrypt and place a master key into one key slot; returns the slot and its material. */
export async function sealKeySlot(
  h: Pick<LuksHeader, 'keyBytes'>,
  alg: { spec: CipherSpec; hash: HashAlg },
  masterKey: Uint8Array,
  passphrase: Uint8Array,
  iterations: number,
  offsetSectors: number,
  p: CryptoProvider,
): Promise<{ slot: LuksKeySlot; material: Uint8Array }> {
  const salt = p.randomBytes(LUKS_SALT_SIZE);
  const slotKey = await p.pbkdf2(alg.hash, passphrase, salt, iterations, h.keyBytes);
  const split = afSplit(alg.hash, p.digest.bind(p), masterKey, LUKS_STRIPES, (n) => p.randomBytes(n));
  const sectors = copyPadded(split);
  await p.sectorCipher(alg.spec, slotKey).encrypt(0, sectors);
  return {
    slot: { active: true, iterations, salt, keyMaterialOffsetSectors: offsetSectors, stripes: LUKS_STRIPES },
    material: sectors.subarray(0, split.length),
  };
}

export interface CreatedLuks {
  /** Header and every slot's key material area: write at the header start. */
  bytes: Uint8Array;
  header: LuksHeader;
  /** Bytes from the header start to the encrypted payload. */
  payloadOffset: number;
  masterKey: Uint8Array;
  cipher: SectorCipher;
}

/**
 * Build a new LUKS1 volume header and key material for one passphrase in
 * slot 0, laid out as qemu-img create lays it out: key material from 4 KiB,
 * each slot's area rounded to 4 KiB, the payload after the eighth area.
 */
export async function createLuks(opts: LuksCreateOptions, passphrase: Uint8Array, p: CryptoProvider): Promise<CreatedLuks> {
  const spec = luksCreateSpec(opts);
  const hash = opts.hashAlg ?? 'sha256';
  const keyBytes = cipherKeyLength(spec);
  let iterations = opts.iterations;
  if (!iterations) {
    const rate = await pbkdf2Rate(p, hash);
    const iterTime = opts.iterTime ?? 2000;
    // PBKDF2 runs its iterations once per digest-sized block of output, so a
    // 64-byte slot key costs twice a 32-byte one: time what is derived.
    // The master-key digest first, as qemu (whose error names the first count that overflows).
    const masterKey = iterationsFor(rate / pbkdf2Blocks(hash, LUKS_DIGEST_SIZE), iterTime, 8);
    iterations = { masterKey, slot: iterationsFor(rate / pbkdf2Blocks(hash, keyBytes), iterTime) };
  }
  const masterKey = p.randomBytes(keyBytes);
  const mkDigestSalt = p.randomBytes(LUKS_SALT_SIZE);
  const mkDigest = await p.pbkdf2(hash, masterKey, mkDigestSalt, iterations.masterKey, LUKS_DIGEST_SIZE);
  const areaSectors = luksSplitKeySectors(keyBytes, LUKS_STRIPES);
  const payloadOffsetSectors = LUKS_HEADER_SECTORS + LUKS_SLOTS * areaSectors;
  const alg = { spec, hash };
  const sealed = await sealKeySlot({ keyBytes }, alg, masterKey, passphrase, iterations.slot, LUKS_HEADER_SECTORS, p);
  const slots: LuksKeySlot[] = [sealed.slot];
  for (let i = 1; i < LUKS_SLOTS; i++) slots.push(emptySlot(LUKS_HEADER_SECTORS + i * areaSectors));
  const header: LuksHeader = {
    version: 1,
    ...luksNames(spec),
    hashSpec: hash,
    payloadOffsetSectors,
    keyBytes,
    mkDigest,
    mkDigestSalt,
    mkDigestIter: iterations.masterKey,
    uuid: opts.uuid ?? randomUuid(p),
    slots,
  };
  const payloadOffset = payloadOffsetSectors * LUKS_SECTOR;
  const bytes = new Uint8Array(payloadOffset);
  bytes.set(encodeLuksHeader(header), 0);
  bytes.set(sealed.material, LUKS_HEADER_SECTORS * LUKS_SECTOR);
  return { bytes, header, payloadOffset, masterKey, cipher: p.sectorCipher(spec, masterKey) };
}

export function emptySlot(offsetSectors: number): LuksKeySlot {
  return { active: false, iterations: 0, salt: new Uint8Array(LUKS_SALT_SIZE), keyMaterialOffsetSectors: offsetSectors, stripes: LUKS_STRIPES };
}
