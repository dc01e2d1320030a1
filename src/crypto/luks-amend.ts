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
import type { CryptoProvider } from './provider.js';

export interface LuksAmendOptions {
  /** active: add `newSecret` in a free (or the given) slot; inactive: erase slots. */
  state: 'active' | 'inactive';
  keyslot?: number;
  newSecret?: Uint8Array;
  /** For erase: the passphrase whose slots go. */
  oldSecret?: Uint8Array;
  /** Milliseconds PBKDF2 should take for the new slot; default 2000. */
  iterTime?: number;
  /** Fixed iteration count for the new slot instead of timing PBKDF2. */
  iterations?: number;
  /** Allow erasing the last slots that hold the key (qemu-img amend --force). */
  force?: boolean;
}

export interface LuksAmendResult {
  header: LuksHeader;
  /** Byte ranges relative to the LUKS header start, to write in this order. */
  writes: { offset: number; data: Uint8Array }[];
}

const bad = (msg: string): ImageError => new ImageError('bad-argument', msg);

function checkSlotIndex(n: number): number {
  if (!Number.isInteger(n) || n < 0 || n >= LUKS_SLOTS) {
    throw bad(`Invalid keyslot ${n >>> 0} specified, must be between 0 and ${LUKS_SLOTS - 1}`);
  }
  return n;
}

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
      index = checkSlotIndex(opts.keyslot);
      if (h.slots[index]!.active) throw bad(`Refusing to overwrite active keyslot ${index} - please erase it first`);
    } else {
      index = h.slots.findIndex((s) => !s.active);
      if (index < 0) throw bad("Can't add a keyslot - all keyslots are in use");
    }
    const iterations =
      opts.iterations ?? iterationsFor((await pbkdf2Rate(p, alg.hash)) / pbkdf2Blocks(alg.hash, h.keyBytes), opts.iterTime ?? 2000);
    const at = h.slots[index]!.keyMaterialOffsetSectors;
    const sealed = await sealKeySlot(h, alg, masterKey, opts.newSecret, iterations, at, p);
    const header = withSlot(h, index, sealed.slot);
    // Key material first: a header naming a slot whose material is not there yet would be worse.
    return {
      header,
      writes: [
        { offset: at * LUKS_SECTOR, data: sealed.material },
        { offset: 0, data: encodeLuksHeader(header) },
      ],
    };
  }
  if (opts.newSecret) throw bad("'new-secret' must not be given when erasing keyslots");
  if (opts.iterTime !== undefined) throw bad("'iter-time' must not be given when erasing keyslots");
  const active = h.slots.map((s, i) => (s.active ? i : -1)).filter((i) => i >= 0);
  let erase: number[];
  if (opts.keyslot !== undefined) {
    const index = checkSlotIndex(opts.keyslot);
    if (!h.slots[index]!.active) throw bad(`Given keyslot ${index} is already erased (inactive) `);
    if (opts.oldSecret && !(await slotOpensWith(h, index, alg, opts.oldSecret, readAt, p))) {
      throw bad(`Given keyslot ${index} doesn't contain the given old password for erase operation`);
    }
    if (active.length === 1 && !opts.force) {
      throw bad(`Attempt to erase the only active keyslot ${index} which will erase all the data in the image irreversibly - refusing operation`);
    }
    erase = [index];
  } else if (opts.oldSecret) {
    erase = [];
    for (const i of active) if (await slotOpensWith(h, i, alg, opts.oldSecret, readAt, p)) erase.push(i);
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
    header = withSlot(header, i, { ...s, active: false, iterations: 0, salt: new Uint8Array(LUKS_SALT_SIZE) });
  }
  // Header first, so the slot is gone before its material is overwritten with noise.
  const writes = [{ offset: 0, data: encodeLuksHeader(header) }];
  for (const i of erase) {
    writes.push({ offset: h.slots[i]!.keyMaterialOffsetSectors * LUKS_SECTOR, data: p.randomBytes(h.keyBytes * h.slots[i]!.stripes) });
  }
  return { header, writes };
}
