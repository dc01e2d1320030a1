/**
 * Key-slot changes on an open LUKS1 volume, as qemu-img amend makes them
 * (encrypt.state=active|inactive, keyslot, new-secret, old-secret, iter-time):
 * the same rules, refusals and messages as qemu 7.2.
 */
import { ImageError } from '../errors.js';
import {
  encodeLuksHeader,
  LUKS_SALT_SIZE,
  LUKS_SECTOR,
  LUKS_SLOTS,
  type LuksHeader,
  type LuksKeySlot,
} from './luks-header.js';
import { luksAlgorithms } from './luks-spec.js';
import { iterationsFor, pbkdf2Blocks, pbkdf2Rate, sealKeySlot, slotOpensWith, type ReadAt } from './luks.js';
import type { CryptoProvider, HashAlg } from './provider.js';

/**
 * A passphrase, or how to get it: qemu looks a secret up only once the
 * checks before it passed, so a missing secret is reported in its place.
 */
export type LuksSecretSource = Uint8Array | (() => Uint8Array);

export interface LuksAmendOptions {
  /** active: add `newSecret` in a free (or the given) slot; inactive: erase slots. */
  state: 'active' | 'inactive';
  /** A C int, as qemu holds it (so -3 is refused as 4294967293 when adding). */
  keyslot?: number;
  newSecret?: LuksSecretSource;
  /** For erase: the passphrase whose slots go. */
  oldSecret?: LuksSecretSource;
  /** Milliseconds PBKDF2 should take for the new slot; default 2000. */
  iterTime?: number;
  /** Fixed iteration count for the new slot instead of timing PBKDF2. */
  iterations?: number;
  /** Allow erasing the last slots that hold the key, or overwriting an active slot (qemu-img amend --force). */
  force?: boolean;
}

export interface LuksAmendResult {
  header: LuksHeader;
  /**
   * Byte ranges relative to the LUKS header start, to write (and flush) in
   * this order; a function gives its bytes when the write is due (the erase
   * passes: fresh noise each, made one at a time).
   */
  writes: { offset: number; data: Uint8Array | (() => Uint8Array) }[];
}

/**
 * Times an erased slot's key material is overwritten with fresh random
 * bytes, each pass written out before the next, as qemu 7.2 does
 * (QCRYPTO_BLOCK_LUKS_ERASE_ITERATIONS): one pass may stay in a cache or
 * a remapped block, many make recovery of the old material unlikely.
 */
export const LUKS_ERASE_PASSES = 40;

const bad = (msg: string): ImageError => new ImageError('bad-argument', msg);

/** qemu prints the index unsigned when adding and signed when erasing. */
function checkSlotIndex(n: number, signed: boolean): number {
  if (!Number.isInteger(n) || n < 0 || n >= LUKS_SLOTS) {
    throw bad(`Invalid keyslot ${signed ? n | 0 : n >>> 0} specified, must be between 0 and ${LUKS_SLOTS - 1}`);
  }
  return n;
}

const erasedSlot = (s: LuksKeySlot): LuksKeySlot => ({ ...s, active: false, iterations: 0, salt: new Uint8Array(LUKS_SALT_SIZE) });

/**
 * The new slot's PBKDF2 iterations for `iterTime` ms, refused as qemu
 * refuses them: a negative iter-time (an unsigned overflow in qemu) and
 * counts beyond 32 bits with its messages, then qimg's own cap.
 */
async function slotIterations(h: LuksHeader, hash: HashAlg, iterTime: number, index: number, p: CryptoProvider): Promise<number> {
  const rate = (await pbkdf2Rate(p, hash)) / pbkdf2Blocks(hash, h.keyBytes);
  const hint = `Failed to write to keyslot ${index}`;
  if (iterTime < 0) throw new ImageError('bad-argument', `PBKDF iterations ${Math.floor(rate * 1000)} too large to scale: Numerical result out of range`, { hint });
  const n = Math.floor(rate * iterTime);
  if (n > 0xffffffff) throw new ImageError('bad-argument', `PBKDF iterations ${n} larger than ${0xffffffff}: Numerical result out of range`, { hint });
  return iterationsFor(rate, iterTime);
}

const resolve = (s: LuksSecretSource): Uint8Array => (typeof s === 'function' ? s() : s);

const withSlot = (h: LuksHeader, i: number, slot: LuksKeySlot): LuksHeader => ({
  ...h,
  slots: h.slots.map((s, j) => (j === i ? slot : s)),
});

/**
 * Add or erase key slots. `masterKey` is the volume key (from unlockLuks with
 * the volume's current secret); a new slot seals it under `newSecret`.
 */
export async function amendLuksSlots(
  h: LuksHeader,
  masterKey: Uint8Array,
  opts: LuksAmendOptions,
  readAt: ReadAt,
  p: CryptoProvider,
): Promise<LuksAmendResult> {
  const alg = luksAlgorithms(h);
  if (opts.state === 'active') {
    if (!opts.newSecret) throw bad("'new-secret' is required to activate a keyslot");
    if (opts.oldSecret) throw bad("'old-secret' must not be given when activating keyslots");
    let index: number;
    if (opts.keyslot !== undefined) {
      index = checkSlotIndex(opts.keyslot, false);
    } else {
      index = h.slots.findIndex((s) => !s.active);
      if (index < 0) throw bad("Can't add a keyslot - all keyslots are in use");
    }
    if (h.slots[index]!.active && !opts.force) throw bad(`Refusing to overwrite active keyslot ${index} - please erase it first`);
    const newSecret = resolve(opts.newSecret);
    const iterations = opts.iterations ?? (await slotIterations(h, alg.hash, opts.iterTime ?? 2000, index, p));
    const at = h.slots[index]!.keyMaterialOffsetSectors;
    const sealed = await sealKeySlot(h, alg, masterKey, newSecret, iterations, at, p);
    const header = withSlot(h, index, sealed.slot);
    // Key material first: a header naming a slot whose material is not there yet would be worse.
    const writes = [
      { offset: at * LUKS_SECTOR, data: sealed.material },
      { offset: 0, data: encodeLuksHeader(header) },
    ];
    // A forced overwrite disables the old slot before its material changes, so no header names half a slot.
    if (h.slots[index]!.active) writes.unshift({ offset: 0, data: encodeLuksHeader(withSlot(h, index, erasedSlot(h.slots[index]!))) });
    return { header, writes };
  }
  if (opts.newSecret) throw bad("'new-secret' must not be given when erasing keyslots");
  if (opts.iterTime !== undefined) throw bad("'iter-time' must not be given when erasing keyslots");
  const oldSecret = opts.oldSecret === undefined ? undefined : resolve(opts.oldSecret);
  const active = h.slots.map((s, i) => (s.active ? i : -1)).filter((i) => i >= 0);
  let erase: number[];
  if (opts.keyslot !== undefined) {
    const index = checkSlotIndex(opts.keyslot, true);
    if (!h.slots[index]!.active) throw bad(`Given keyslot ${index} is already erased (inactive) `);
    if (oldSecret && !(await slotOpensWith(h, index, alg, oldSecret, readAt, p))) {
      throw bad(`Given keyslot ${index} doesn't contain the given old password for erase operation`);
    }
    if (active.length === 1 && !opts.force) {
      throw bad(`Attempt to erase the only active keyslot ${index} which will erase all the data in the image irreversibly - refusing operation`);
    }
    erase = [index];
  } else if (oldSecret) {
    erase = [];
    for (const i of active) if (await slotOpensWith(h, i, alg, oldSecret, readAt, p)) erase.push(i);
    if (erase.length === 0) throw bad('No keyslots match given (old) password for erase operation');
    if (erase.length === active.length && !opts.force) {
      throw bad(
        'All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation',
      );
    }
  } else {
    throw bad('To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given');
  }
  let header = h;
  for (const i of erase) {
    const s = h.slots[i]!;
    header = withSlot(header, i, erasedSlot(s));
  }
  // Header first, so the slot is gone before its material is overwritten with noise.
  const writes: LuksAmendResult['writes'] = [{ offset: 0, data: encodeLuksHeader(header) }];
  for (const i of erase) {
    const slot = h.slots[i]!;
    const noise = (): Uint8Array => p.randomBytes(h.keyBytes * slot.stripes);
    for (let pass = 0; pass < LUKS_ERASE_PASSES; pass++) writes.push({ offset: slot.keyMaterialOffsetSectors * LUKS_SECTOR, data: noise });
  }
  return { header, writes };
}
