/** The create options of a raw LUKS volume, as qemu's luks driver takes them. */
import { option, type OptionSpec } from '../../block/create-options.js';
import type { CreateContext } from '../../block/format.js';
import type { OptionBag } from '../../block/options.js';
import { lookupSecret } from '../../block/secrets.js';
import type { LuksCreateOptions } from '../../crypto/luks.js';
import { ImageError } from '../../errors.js';
import { LUKS_CREATE_KEYS, luksCreateOptions } from '../qcow2/create-encryption.js';

/** In the order qemu prints them on its Formatting line. */
export const LUKS_CREATE_OPTIONS: readonly OptionSpec[] = [
  option('size', 'size', 'Virtual disk size'),
  option('key-secret', 'str', 'ID of the secret that provides the keyslot passphrase', 'keySecret'),
  option('cipher-alg', 'str', 'Name of encryption cipher algorithm', 'cipherAlg'),
  option('cipher-mode', 'str', 'Name of encryption cipher mode', 'cipherMode'),
  option('ivgen-alg', 'str', 'Name of IV generator algorithm', 'ivgenAlg'),
  option('ivgen-hash-alg', 'str', 'Name of IV generator hash algorithm', 'ivgenHashAlg'),
  option('hash-alg', 'str', 'Name of encryption hash algorithm', 'hashAlg'),
  option('iter-time', 'num', 'Time to spend in PBKDF in milliseconds', 'iterTime'),
];

export function planLuksCreate(bag: OptionBag, ctx: Pick<CreateContext, 'secrets'>): { passphrase: Uint8Array; options: LuksCreateOptions } {
  const extra: Record<string, string> = {};
  for (const k of LUKS_CREATE_KEYS) {
    const v = bag.string(k);
    if (v !== undefined) extra[k] = v;
  }
  const keySecret = bag.string('key-secret');
  if (keySecret === undefined) throw new ImageError('bad-argument', "Parameter 'key-secret' is required for cipher");
  return { passphrase: lookupSecret(ctx.secrets, keySecret), options: luksCreateOptions(extra, '') };
}
