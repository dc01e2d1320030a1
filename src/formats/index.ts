/** Every format qimg knows, registered with the block layer. */
import { registerFormat, registerOverlayFormat } from '../block/open.js';
import { createQcow2 } from './qcow2/create.js';
import { openQed } from './qed/qed.js';
import { openRaw } from './raw/raw.js';
import { openQcow2 } from './qcow2/qcow2.js';

registerFormat('raw', openRaw);
registerFormat('qcow2', openQcow2);
registerFormat('qed', openQed);

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
