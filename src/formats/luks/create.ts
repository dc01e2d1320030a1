/**
 * Creating a raw LUKS volume (qemu-img create -f luks): the LUKS header and
 * key material for the passphrase the key-secret names, then the payload
 * at the guest size, sparse unless preallocated (full: encrypted zeros).
 */
import { CipherStorage } from '../../block/cipher-storage.js';
import type { CreateContext } from '../../block/format.js';
import type { OptionBag } from '../../block/options.js';
import { createLuks } from '../../crypto/luks.js';
import { portableCrypto } from '../../crypto/portable.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { alignUp } from '../../units.js';
import { planLuksCreate } from './options.js';

export async function createLuksVolume(storage: Storage, bag: OptionBag, ctx: CreateContext): Promise<void> {
  const size = alignUp(bag.size('size', 0), 512);
  const prealloc = bag.string('preallocation') ?? 'off';
  bag.string('nocow');
  bag.string('extent_size_hint');
  if (prealloc !== 'off' && prealloc !== 'falloc' && prealloc !== 'full') {
    throw new ImageError(prealloc === 'metadata' ? 'unsupported' : 'bad-argument', prealloc === 'metadata' ? 'Unsupported preallocation mode: metadata' : `invalid parameter value: ${prealloc}`);
  }
  const plan = planLuksCreate(bag, ctx);
  const created = await createLuks(plan.options, plan.passphrase, ctx.crypto ?? portableCrypto);
  await storage.truncate(0);
  await storage.write(created.bytes, 0);
  const end = created.payloadOffset + size;
  await storage.truncate(end);
  if (prealloc === 'falloc' && size > 0 && (await storage.allocate?.(created.payloadOffset, size))) return;
  if (prealloc !== 'off' && size > 0) {
    // The guest reads zeros: the payload holds encrypted zeros.
    const payload = new CipherStorage(storage, created.cipher, -created.payloadOffset);
    await payload.writeZeroes(created.payloadOffset, size);
  }
  await storage.flush();
}
