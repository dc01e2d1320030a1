/** The writable refcount store of an image, keeping the header in step when the refcount table moves. */
import type { Storage } from '../../io/storage.js';
import type { Qcow2Header } from './header.js';
import { RefcountStore } from './refcounts.js';

export function loadRefcountStore(storage: Storage, header: Qcow2Header): Promise<RefcountStore> {
  return RefcountStore.load({
    storage,
    clusterBits: header.clusterBits,
    refcountOrder: header.refcountOrder,
    tableOffset: header.refcountTableOffset,
    tableClusters: header.refcountTableClusters,
    onTableMoved: async (offset, clusters) => {
      header.refcountTableOffset = offset;
      header.refcountTableClusters = clusters;
      const b = new Uint8Array(12);
      const v = new DataView(b.buffer);
      v.setBigUint64(0, BigInt(offset), false);
      v.setUint32(8, clusters, false);
      await storage.write(b, 48);
      await storage.flush();
    },
  });
}
