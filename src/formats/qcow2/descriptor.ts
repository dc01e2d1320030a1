/** qcow2 as the block layer sees it: open, create (-o options), check, measure. */
import { genericCreateLine, option, protocolOptionsTail, type OptionSpec } from '../../block/create-options.js';
import type { FormatDescriptor } from '../../block/format.js';
import type { OptionBag } from '../../block/options.js';
import { ImageError } from '../../errors.js';
import { amendQcow2, parseQcow2Amendments, QCOW2_AMEND_HELP } from './amend.js';
import { checkQcow2File } from './check.js';
import { newLuksCipherSpec } from './create-encryption.js';
import { createQcow2, parseQcow2CreateOptions, qcow2CreateLine } from './create.js';
import { measureQcow2 } from './measure-image.js';
import { openQcow2 } from './qcow2.js';
import { qcow2StreamWriter } from './stream-writer.js';
import { qcow2SnapshotOps } from './snapshot-ops.js';

const o = option;

/** qcow2's create options in qemu's Formatting-line order, with their typed keys. */
export const QCOW2_CREATE_OPTIONS: readonly OptionSpec[] = [
  o('encryption', 'bool', "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"),
  o('encrypt.format', 'str', "Encrypt the image, format choices: 'aes', 'luks'", 'encryptFormat'),
  o('encrypt.key-secret', 'str', 'ID of secret providing qcow AES key or LUKS passphrase', 'encryptKeySecret'),
  o('encrypt.cipher-alg', 'str', 'Name of encryption cipher algorithm'),
  o('encrypt.cipher-mode', 'str', 'Name of encryption cipher mode'),
  o('encrypt.ivgen-alg', 'str', 'Name of IV generator algorithm'),
  o('encrypt.ivgen-hash-alg', 'str', 'Name of IV generator hash algorithm'),
  o('encrypt.hash-alg', 'str', 'Name of encryption hash algorithm'),
  o('encrypt.iter-time', 'num', 'Time to spend in PBKDF in milliseconds'),
  o('cluster_size', 'size', 'qcow2 cluster size', 'clusterSize'),
  o('extended_l2', 'bool', 'Extended L2 tables', 'extendedL2'),
  o('preallocation', 'str', 'Preallocation mode (allowed values: off, metadata, falloc, full)', 'preallocation'),
  o('compression_type', 'str', 'Compression method used for image cluster compression', 'compressionType'),
  o('size', 'size', 'Virtual disk size'),
  o('compat', 'str', 'Compatibility level (v2 [0.10] or v3 [1.1])', 'version'),
  o('backing_file', 'str', 'File name of a base image', 'backingFile'),
  o('backing_fmt', 'str', 'Image format of the base image', 'backingFormat'),
  o('data_file', 'str', 'File name of an external data file', 'dataFile'),
  o('data_file_raw', 'bool', 'The external data file must stay valid as a raw image', 'dataFileRaw'),
  o('lazy_refcounts', 'bool', 'Postpone refcount updates', 'lazyRefcounts'),
  o('refcount_bits', 'num', 'Width of a reference count entry in bits', 'refcountBits'),
];

/** Defaults qemu prints on the Formatting line even when not given. */
const PRINTED_DEFAULTS: Record<string, string> = {
  cluster_size: '65536',
  extended_l2: 'off',
  compression_type: 'zlib',
  lazy_refcounts: 'off',
  refcount_bits: '16',
};

/** The typed options, after qemu's typed parse; compat mapped onto qemu's version enum. */
function typedOptions(bag: OptionBag) {
  const parsed = parseQcow2CreateOptions(bag);
  const compat = (parsed as { compat?: string }).compat;
  if (compat === 'v2' || compat === '0.10') parsed.version = 2;
  else if (compat !== undefined && compat !== 'v3' && compat !== '1.1') throw new ImageError('bad-argument', `Parameter 'version' does not accept value '${compat}'`);
  return parsed;
}

export const qcow2Format: FormatDescriptor = {
  name: 'qcow2',
  openOptions: ['encrypt.key-secret'],
  hasMetadata: true,
  supportsBacking: true,
  compresses: true,
  // qemu's qcow2_probe: the magic, and a version qemu can read.
  probe: (head) => head.length >= 8 && view(head).getUint32(0) === 0x514649fb && view(head).getUint32(4) >= 2,
  open: openQcow2,
  createOptions: QCOW2_CREATE_OPTIONS,
  createLine(filename, bag) {
    const size = bag.size('size', 0);
    // A value qemu's typed parse refuses: qemu prints the line from the raw list, then fails.
    const probe = bag.clone();
    for (const k of ['nocow', 'extent_size_hint']) probe.string(k);
    let parsed;
    try {
      parsed = parseQcow2CreateOptions(probe);
    } catch {
      return genericCreateLine('qcow2', filename, bag.clone(), PRINTED_DEFAULTS);
    }
    return qcow2CreateLine(filename, parsed, size) + protocolOptionsTail(bag.clone(), ['nocow', 'extent_size_hint']);
  },
  createCipher: (bag) => (bag.peek('encrypt.format') === 'luks' ? newLuksCipherSpec(bag, 'encrypt.') : undefined),
  async create(storage, bag, ctx) {
    for (const k of ['nocow', 'extent_size_hint']) bag.string(k);
    const size = bag.size('size', 0);
    const parsed = typedOptions(bag);
    await createQcow2(storage, { ...parsed, size }, { codecs: ctx.codecs, openDataFile: ctx.openDataFile, secrets: ctx.secrets, crypto: ctx.crypto });
  },
  check: (storage, repair) => checkQcow2File(storage, repair),
  writeStream: qcow2StreamWriter,
  measure: measureQcow2,
  snapshots: qcow2SnapshotOps,
  amend: async (storage, bag, ctx) => amendQcow2(storage, parseQcow2Amendments(bag), ctx),
  amendOptions: QCOW2_AMEND_HELP,
};

const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.length);
