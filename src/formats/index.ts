/** Every format qimg knows, registered with the block layer. */
import { registerOverlayFormat } from '../block/open.js';
import { registerFormat } from '../block/format.js';
import { createQcow2 } from './qcow2/create.js';
import { qcow2Format } from './qcow2/descriptor.js';
import { qedFormat } from './qed/descriptor.js';
import { rawFormat } from './raw/descriptor.js';
import { luksFormat } from './luks/descriptor.js';

registerFormat(rawFormat);
registerFormat(qcow2Format);
registerFormat(qedFormat);
registerFormat(luksFormat);

// Snapshot mode's overlay: qcow2 with qemu's defaults, as qemu's temporary snapshot.
registerOverlayFormat('qcow2', (storage, o, codecs) =>
  createQcow2(
    storage,
    {
      size: o.size,
      version: 3,
      clusterSize: 65536,
      refcountBits: 16,
      lazyRefcounts: false,
      extendedL2: false,
      compressionType: 'zlib',
      preallocation: 'off',
      dataFileRaw: false,
      backingFile: o.backingFile,
      backingFmt: o.backingFormat,
    },
    { codecs },
  ),
);
