/** The two kinds of convert target: a raw file's storage, and a writable image. */
import type { Image } from '../block/image.js';
import type { Storage } from '../io/storage.js';
import type { ConvertTarget } from './convert.js';

/** A raw file as a convert target: writes go straight to the storage. */
export function storageTarget(st: Storage): ConvertTarget {
  return {
    write: (offset, data) => st.write(data, offset),
    writeZeroes: st.writeZeroes ? (offset, length) => st.writeZeroes!(offset, length, { mayUnmap: true }) : undefined,
    flush: () => st.flush(),
    close: () => st.close(),
  };
}

/** A writable image as a convert target (compressed writes where the format has them). */
export function imageTarget(img: Image): ConvertTarget {
  return {
    write: (offset, data) => img.write(offset, data),
    writeCompressed: (offset, data) => img.write(offset, data, { compressed: true }),
    writeZeroes: (offset, length) => img.writeZeroes(offset, length, { mayUnmap: true }),
    flush: () => img.flush(),
    close: () => img.close(),
  };
}
