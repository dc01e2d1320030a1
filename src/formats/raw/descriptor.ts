/** raw as the block layer sees it: open, create, measure. raw has no metadata to check. */
import { genericCreateLine, option, type OptionSpec } from '../../block/create-options.js';
import type { FormatDescriptor } from '../../block/format.js';
import { alignUp } from '../../units.js';
import { createRaw } from './create.js';
import { openRaw } from './raw.js';
import { rawStreamWriter } from './stream-writer.js';

export const RAW_CREATE_OPTIONS: readonly OptionSpec[] = [option('size', 'size', 'Virtual disk size')];

export const rawFormat: FormatDescriptor = {
  name: 'raw',
  hasMetadata: false,
  supportsBacking: false,
  open: openRaw,
  createOptions: RAW_CREATE_OPTIONS,
  createLine: (filename, bag) => genericCreateLine('raw', filename, bag.clone()),
  create: (storage, bag) => createRaw(storage, bag),
  writeStream: rawStreamWriter,
  async measure(bag, source) {
    bag.string('preallocation');
    const size = bag.size('size', 0);
    bag.assertAllUsed();
    const required = source ? source.size : alignUp(size, 512);
    return { required, 'fully-allocated': required };
  },
};
