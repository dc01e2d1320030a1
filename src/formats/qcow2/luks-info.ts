/**
 * The LUKS1 header of a qcow2 image with crypt_method 2, parsed only for
 * qemu-img info's `encrypt` block (no key material is touched). Layout:
 * cryptsetup's LUKS1 on-disk format, big-endian, 592 bytes.
 */
import { ImageError } from '../../errors.js';
import { cString } from './text.js';

export const LUKS_HEADER_SIZE = 592;
const LUKS_MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
const LUKS_SECTOR = 512;
const KEY_SLOT_ENABLED = 0x00ac71f3;
const KEY_SLOTS = 8;
const KEY_SLOT_SIZE = 48;
const KEY_SLOTS_OFFSET = 208;

export interface LuksSlotInfo {
  active: boolean;
  iters?: number;
  stripes?: number;
  'key-offset': number;
}

/** QEMU's QCryptoBlockInfoLUKS as qemu-img 7.2 prints it, plus format: "luks". */
export interface LuksInfo {
  format: 'luks';
  'cipher-alg': string;
  'cipher-mode': string;
  'ivgen-alg': string;
  'ivgen-hash-alg'?: string;
  'hash-alg': string;
  'payload-offset': number;
  'master-key-iters': number;
  uuid: string;
  slots: LuksSlotInfo[];
}

const CIPHER_KEY_SIZES: Record<string, number[]> = {
  aes: [16, 24, 32],
  cast5: [16],
  serpent: [16, 24, 32],
  twofish: [16, 24, 32],
  sm4: [16],
};

/** qcrypto_block_luks_cipher_name_lookup: "aes" + 32-byte key → "aes-256" (XTS keys are doubled). */
function cipherAlg(name: string, mode: string, keyBytes: number): string {
  const bytes = mode === 'xts' ? keyBytes / 2 : keyBytes;
  // Own keys only: a header naming 'constructor' or '__proto__' must not find Object.prototype's members.
  const sizes = Object.hasOwn(CIPHER_KEY_SIZES, name) ? CIPHER_KEY_SIZES[name] : undefined;
  if (!sizes || !sizes.includes(bytes)) {
    throw new ImageError('unsupported', `Cipher '${name}' with key size ${bytes} bytes not supported`);
  }
  return `${name}-${bytes * 8}`;
}

/** Check the magic and version (as opening does) and extract the info fields. */
export function parseLuksHeader(buf: Uint8Array): LuksInfo {
  if (buf.length < LUKS_HEADER_SIZE || LUKS_MAGIC.some((b, i) => buf[i] !== b)) {
    throw new ImageError('invalid', 'Volume is not in LUKS format');
  }
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const version = v.getUint16(6, false);
  if (version !== 1) throw new ImageError('unsupported', `Unsupported LUKS version ${version}`);
  const cipherName = cString(buf.subarray(8, 40));
  const modeSpec = cString(buf.subarray(40, 72));
  const hashSpec = cString(buf.subarray(72, 104));
  const dash = modeSpec.indexOf('-');
  if (dash < 0) throw new ImageError('unsupported', `Unexpected cipher mode string format '${modeSpec}'`);
  const mode = modeSpec.slice(0, dash);
  const ivgen = modeSpec.slice(dash + 1);
  const colon = ivgen.indexOf(':');
  const ivgenAlg = colon < 0 ? ivgen : ivgen.slice(0, colon);
  const ivgenHash = colon < 0 ? undefined : ivgen.slice(colon + 1);
  const masterKeyLen = v.getUint32(108, false);
  const info: LuksInfo = {
    format: 'luks',
    'cipher-alg': cipherAlg(cipherName, mode, masterKeyLen),
    'cipher-mode': mode,
    'ivgen-alg': ivgenAlg,
    'hash-alg': hashSpec,
    'payload-offset': v.getUint32(104, false) * LUKS_SECTOR,
    'master-key-iters': v.getUint32(164, false),
    uuid: cString(buf.subarray(168, 208)),
    slots: [],
  };
  if (ivgenAlg === 'essiv') info['ivgen-hash-alg'] = ivgenHash ?? 'md5';
  for (let i = 0; i < KEY_SLOTS; i++) {
    const p = KEY_SLOTS_OFFSET + i * KEY_SLOT_SIZE;
    const active = v.getUint32(p, false) === KEY_SLOT_ENABLED;
    const slot: LuksSlotInfo = { active, 'key-offset': v.getUint32(p + 40, false) * LUKS_SECTOR };
    if (active) {
      slot.iters = v.getUint32(p + 4, false);
      slot.stripes = v.getUint32(p + 44, false);
    }
    info.slots.push(slot);
  }
  return info;
}
