/**
 * Encryption of a new qcow2 image (qemu's -o encrypt.*): the options as
 * qemu checks them, and for LUKS the header and key material the image
 * carries in clusters of its own (named by the crypto header extension).
 */
import type { CreateContext } from '../../block/format.js';
import { lookupSecret } from '../../block/secrets.js';
import type { OptionBag } from '../../block/options.js';
import { createLuks, luksCreateSpec, type LuksCreateOptions } from '../../crypto/luks.js';
import { portableCrypto } from '../../crypto/portable.js';
import { isHashAlg } from '../../crypto/provider.js';
import { CIPHER_ALGS, CIPHER_MODES, IVGEN_ALGS, type CipherAlg, type CipherSpec, type CipherMode, type IvGenAlg } from '../../crypto/sector-cipher.js';
import { ImageError } from '../../errors.js';

/** The encrypt.* options besides format and key-secret, in the order qemu prints them. */
export const LUKS_CREATE_KEYS = ['cipher-alg', 'cipher-mode', 'ivgen-alg', 'ivgen-hash-alg', 'hash-alg', 'iter-time'] as const;

export interface EncryptionPlan {
  format: 'luks' | 'aes';
  passphrase: Uint8Array;
  luks?: LuksCreateOptions;
}

const bad = (m: string): ImageError => new ImageError('bad-argument', m);

/**
 * qemu's checks of the encryption options, before anything is written:
 * the secret must exist; AES takes no algorithm options.
 */
export function planEncryption(
  format: string | undefined,
  keySecret: string | undefined,
  extra: Readonly<Record<string, string>>,
  ctx: Pick<CreateContext, 'secrets'>,
): EncryptionPlan | undefined {
  if (format === undefined) {
    if (keySecret !== undefined) throw bad("Parameter 'encrypt.format' is missing");
    return undefined;
  }
  if (format !== 'luks' && format !== 'aes') throw bad(`Parameter 'encrypt.format' does not accept value '${format}'`);
  if (format === 'aes') {
    const unexpected = LUKS_CREATE_KEYS.find((k) => extra[k] !== undefined);
    if (unexpected) throw bad(`Parameter 'encrypt.${unexpected}' is unexpected`);
  }
  if (keySecret === undefined) throw bad("Parameter 'encrypt.key-secret' is required for cipher");
  const passphrase = lookupSecret(ctx.secrets, keySecret);
  if (format === 'aes') return { format, passphrase };
  return { format, passphrase, luks: luksCreateOptions(extra, 'encrypt.') };
}

/** The LUKS options among `extra` (keys without prefix), checked as qemu does; `prefix` names them in messages. */
export function luksCreateOptions(extra: Readonly<Record<string, string>>, prefix: string): LuksCreateOptions {
  const o: LuksCreateOptions = {};
  const pick = <T extends string>(key: string, allowed: readonly string[]): T | undefined => {
    const v = extra[key];
    if (v === undefined) return undefined;
    if (!allowed.includes(v)) throw bad(`Parameter '${prefix}${key}' does not accept value '${v}'`);
    return v as T;
  };
  o.cipherAlg = pick<CipherAlg>('cipher-alg', CIPHER_ALGS);
  o.cipherMode = pick<CipherMode>('cipher-mode', CIPHER_MODES);
  o.ivgenAlg = pick<IvGenAlg>('ivgen-alg', IVGEN_ALGS);
  for (const k of ['ivgen-hash-alg', 'hash-alg'] as const) {
    const v = extra[k];
    if (v !== undefined && !isHashAlg(v)) throw bad(`Parameter '${prefix}${k}' does not accept value '${v}'`);
  }
  if (extra['ivgen-hash-alg'] !== undefined) o.ivgenHashAlg = extra['ivgen-hash-alg'] as LuksCreateOptions['ivgenHashAlg'];
  if (extra['hash-alg'] !== undefined) o.hashAlg = extra['hash-alg'] as LuksCreateOptions['hashAlg'];
  const it = extra['iter-time'];
  if (it !== undefined) {
    if (!/^\d+$/.test(it)) throw bad(`Parameter '${prefix}iter-time' expects a number`);
    // The typed option is a signed 64-bit integer.
    if (BigInt(it) >= 2n ** 63n) throw bad(`Parameter '${prefix}iter-time' expects integer`);
    o.iterTime = Number(it);
  }
  return o;
}

/**
 * The cipher of a new LUKS volume whose options (keys after `prefix`) are in
 * `bag`, or undefined when they do not name a valid one (create reports why).
 */
export function newLuksCipherSpec(bag: OptionBag, prefix: string): CipherSpec | undefined {
  const extra: Record<string, string> = {};
  for (const k of LUKS_CREATE_KEYS) {
    const v = bag.peek(prefix + k);
    if (v !== undefined) extra[k] = v;
  }
  try {
    return luksCreateSpec(luksCreateOptions(extra, prefix));
  } catch {
    return undefined;
  }
}

/** The LUKS header and key material for a new image, as bytes to place in the image. */
export async function luksHeaderBytes(plan: EncryptionPlan, ctx: Pick<CreateContext, 'crypto'>): Promise<Uint8Array> {
  const created = await createLuks(plan.luks ?? {}, plan.passphrase, ctx.crypto ?? portableCrypto);
  return created.bytes;
}
