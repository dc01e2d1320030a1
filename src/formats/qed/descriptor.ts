/** QED as the block layer sees it: open, create (-o options), check. qemu cannot measure QED. */
import { option, protocolOptionsTail, type OptionSpec } from '../../block/create-options.js';
import type { FormatDescriptor } from '../../block/format.js';
import type { OptionBag } from '../../block/options.js';
import { checkQedFile } from './check.js';
import { createQed, qedCreateLine, type QedCreateOptions } from './create.js';
import { openQed } from './qed.js';

export const QED_CREATE_OPTIONS: readonly OptionSpec[] = [
  option('size', 'size', 'Virtual disk size'),
  option('backing_file', 'str', 'File name of a base image', 'backingFile'),
  option('backing_fmt', 'str', 'Image format of the base image', 'backingFormat'),
  option('cluster_size', 'size', 'Cluster size (in bytes)', 'clusterSize'),
  option('table_size', 'size', 'L1/L2 table size (in clusters)', 'tableSize'),
];

/** Protocol options QED's own line leaves out: printed after it, as qemu does. */
const PROTOCOL_TAIL = ['nocow', 'preallocation', 'extent_size_hint'];

function typedOptions(bag: OptionBag): QedCreateOptions & { size: number } {
  return {
    size: bag.size('size', 0),
    clusterSize: bag.size('cluster_size'),
    tableSize: bag.size('table_size'),
    backingFile: bag.string('backing_file'),
    backingFmt: bag.string('backing_fmt'),
  };
}

export const qedFormat: FormatDescriptor = {
  name: 'qed',
  hasMetadata: true,
  supportsBacking: true,
  probe: (head) => head.length >= 4 && new DataView(head.buffer, head.byteOffset, head.length).getUint32(0, true) === 0x00444551,
  open: openQed,
  createOptions: QED_CREATE_OPTIONS,
  createLine: (filename, bag) => qedCreateLine(filename, typedOptions(bag.clone())) + protocolOptionsTail(bag.clone(), PROTOCOL_TAIL),
  async create(storage, bag) {
    await createQed(storage, typedOptions(bag));
  },
  check: (storage, repair) => checkQedFile(storage, repair),
};
