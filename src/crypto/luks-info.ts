/**
 * A LUKS header as qemu-img info describes it (QEMU's
 * QCryptoBlockInfoLUKS): algorithm names, offsets in bytes, and per key
 * slot its state, iterations and stripes. No key material is touched.
 */
import type { LuksHeader } from './luks-header.js';
import { LUKS_SECTOR } from './luks-header.js';
import { luksAlgorithms } from './luks-spec.js';

export interface LuksSlotInfo {
  active: boolean;
  iters?: number;
  stripes?: number;
  'key-offset': number;
}

export interface LuksInfo {
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

export function luksInfo(h: LuksHeader): LuksInfo {
  const { spec, hash } = luksAlgorithms(h);
  const info: LuksInfo = {
    'cipher-alg': spec.alg,
    'cipher-mode': spec.mode,
    'ivgen-alg': spec.ivgen,
    'hash-alg': hash,
    'payload-offset': h.payloadOffsetSectors * LUKS_SECTOR,
    'master-key-iters': h.mkDigestIter,
    uuid: h.uuid,
    slots: h.slots.map((s) => {
      const slot: LuksSlotInfo = { active: s.active, 'key-offset': s.keyMaterialOffsetSectors * LUKS_SECTOR };
      if (s.active) {
        slot.iters = s.iterations;
        slot.stripes = s.stripes;
      }
      return slot;
    }),
  };
  if (spec.ivgenHash !== undefined) info['ivgen-hash-alg'] = spec.ivgenHash;
  return info;
}
