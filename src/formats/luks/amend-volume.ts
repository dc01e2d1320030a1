/**
 * qemu-img amend for a raw LUKS volume: only its key slots change. The
 * option names and number syntax are checked before the meter starts, the
 * request itself after, as qemu does.
 */
import type { AmendContext } from '../../block/format.js';
import type { OptionBag } from '../../block/options.js';
import { LUKS_HEADER_SIZE } from '../../crypto/luks-header.js';
import { parseLuksHeader } from '../../crypto/luks.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { applyLuksAmend, luksAmendRequest, readLuksAmendText } from './amend.js';
import { LUKS_CREATE_OPTIONS } from './options.js';

const CREATE_ONLY = new Set(LUKS_CREATE_OPTIONS.map((o) => o.name));

export async function amendLuksVolume(storage: Storage, bag: OptionBag, ctx: AmendContext = {}): Promise<void> {
  const text = readLuksAmendText(bag) ?? {};
  for (const k of bag.unused()) {
    const hint = CREATE_ONLY.has(k) ? 'This option is only supported for image creation' : undefined;
    throw new ImageError('bad-argument', `Invalid parameter '${k}'`, { hint });
  }
  ctx.onStart?.();
  const req = luksAmendRequest(text, ctx.force ?? false);
  const head = new Uint8Array(LUKS_HEADER_SIZE);
  await storage.read(head, 0);
  const io = {
    readAt: async (offset: number, length: number) => {
      const b = new Uint8Array(length);
      await storage.read(b, offset);
      return b;
    },
    write: (offset: number, data: Uint8Array) => storage.write(data, offset),
    flush: () => storage.flush(),
  };
  await applyLuksAmend(parseLuksHeader(head), io, req, ctx, 'key-secret');
}
