/**
 * Creating a raw image: the file at the virtual size rounded up to whole
 * sectors, sparse, or preallocated: falloc allocates blocks without writing
 * them where the storage can (zeros are written where it cannot), full
 * writes zeros.
 */
import type { OptionBag } from '../../block/options.js';
import { ImageError, ioError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { alignUp } from '../../units.js';

const ZERO_CHUNK = 1 << 20;

export async function createRaw(storage: Storage, bag: OptionBag): Promise<void> {
  const size = bag.size('size', 0);
  const prealloc = bag.string('preallocation') ?? 'off';
  bag.string('nocow');
  bag.string('extent_size_hint');
  if (prealloc === 'metadata') throw new ImageError('unsupported', 'Unsupported preallocation mode: metadata');
  if (prealloc !== 'off' && prealloc !== 'falloc' && prealloc !== 'full') throw new ImageError('bad-argument', `invalid parameter value: ${prealloc}`);
  const total = alignUp(size, 512);
  await storage.truncate(0);
  if (prealloc === 'off') {
    await storage.truncate(total);
    await allocateFirstBlock(storage, total);
    return;
  }
  const zeros = new Uint8Array(Math.min(ZERO_CHUNK, total));
  try {
    // falloc allocates blocks without writing them where the host can (qemu's posix_fallocate); full writes zeros.
    if (prealloc === 'falloc' && total > 0 && (await storage.allocate?.(0, total))) {
      await allocateFirstBlock(storage, total);
      await storage.flush();
      return;
    }
    for (let p = 0; p < total; p += zeros.length) await storage.write(zeros.subarray(0, Math.min(zeros.length, total - p)), p);
    await storage.flush();
  } catch (e) {
    // file-posix's words for the two modes.
    const what = prealloc === 'full' ? 'Could not write zeros for preallocation' : 'Could not preallocate data for the new file';
    const io = ioError(e);
    throw new ImageError('io', `${what}: ${io.message}`, { cause: e, errno: io.errno });
  }
}

/**
 * qemu's file driver writes the first block of a new file (allocate_first_block)
 * so that later probing of the request alignment finds data there; a sparse
 * file would otherwise answer with a hole. Done here too so that the files
 * qemu-img and qimg create are allocated alike.
 */
async function allocateFirstBlock(storage: Storage, total: number): Promise<void> {
  const n = Math.min(total, 4096);
  if (n > 0) await storage.write(new Uint8Array(n), 0);
}
