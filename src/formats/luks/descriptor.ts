/** qemu's `luks` format: a raw LUKS1 volume, as the block layer sees it. */
import { genericCreateLine } from '../../block/create-options.js';
import type { FormatDescriptor } from '../../block/format.js';
import { LUKS_MAGIC } from '../../crypto/luks-header.js';
import { newLuksCipherSpec } from '../qcow2/create-encryption.js';
import { LUKS_AMEND_HELP } from './amend.js';
import { amendLuksVolume } from './amend-volume.js';
import { createLuksVolume } from './create.js';
import { openLuks } from './luks.js';
import { LUKS_CREATE_OPTIONS } from './options.js';

export const luksFormat: FormatDescriptor = {
  name: 'luks',
  openOptions: ['key-secret'],
  hasMetadata: true,
  supportsBacking: false,
  notZeroInitialized: true,
  // qemu's probe: the magic and version 1 in the first 8 bytes (the probe reads less than a whole header).
  probe: (head) => head.length >= 8 && LUKS_MAGIC.every((b, i) => head[i] === b) && head[6] === 0 && head[7] === 1,
  open: openLuks,
  createOptions: LUKS_CREATE_OPTIONS,
  createLine: (filename, bag) => genericCreateLine('luks', filename, bag.clone()),
  createCipher: (bag) => newLuksCipherSpec(bag, ''),
  create: (storage, bag, ctx) => createLuksVolume(storage, bag, ctx),
  amend: (storage, bag, ctx) => amendLuksVolume(storage, bag, ctx),
  amendOptions: LUKS_AMEND_HELP,
};
