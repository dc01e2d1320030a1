/**
 * amend's encrypt.* options for a qcow2 image with LUKS encryption: the
 * key slots of the LUKS header its crypto header extension locates change
 * in place; nothing outside that area is read or written.
 */
import type { AmendContext } from '../../block/format.js';
import { LUKS_HEADER_SIZE } from '../../crypto/luks-header.js';
import { parseLuksHeader } from '../../crypto/luks.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { applyLuksAmend, luksAmendRequest, type LuksAmendText } from '../luks/amend.js';
import type { Qcow2Header } from './header.js';

export async function amendQcow2Keyslots(storage: Storage, h: Qcow2Header, text: LuksAmendText, ctx: AmendContext): Promise<void> {
  const req = luksAmendRequest(text, ctx.force ?? false);
  const ext = h.extensions.cryptoHeader;
  if (!ext) throw new ImageError('invalid', 'LUKS encrypted image has no encryption header extension');
  const inside = (at: number, n: number): void => {
    if (at < 0 || at + n > ext.length) throw new ImageError('invalid', 'LUKS key material lies past the end of the encryption header');
  };
  const head = new Uint8Array(LUKS_HEADER_SIZE);
  inside(0, head.length);
  await storage.read(head, ext.offset);
  const io = {
    readAt: async (at: number, n: number) => {
      inside(at, n);
      const b = new Uint8Array(n);
      await storage.read(b, ext.offset + at);
      return b;
    },
    write: async (at: number, data: Uint8Array) => {
      inside(at, data.length);
      await storage.write(data, ext.offset + at);
    },
    flush: () => storage.flush(),
  };
  await applyLuksAmend(parseLuksHeader(head), io, req, ctx, 'encrypt.key-secret');
}
