/**
 * A convert target in a writethrough cache mode (-t writethrough or
 * directsync): as qemu's BlockBackend does without a write cache, every
 * write is followed by a flush before it counts as done.
 */
import type { ConvertTarget } from './convert.js';

export function writethroughTarget(target: ConvertTarget): ConvertTarget {
  const t: ConvertTarget = {
    write: async (offset, data) => {
      await target.write(offset, data);
      await target.flush();
    },
    flush: () => target.flush(),
    close: () => target.close(),
  };
  if (target.writeCompressed) {
    const wc = target.writeCompressed.bind(target);
    t.writeCompressed = async (offset, data) => {
      await wc(offset, data);
      await target.flush();
    };
  }
  if (target.writeZeroes) {
    const wz = target.writeZeroes.bind(target);
    t.writeZeroes = async (offset, length) => {
      await wz(offset, length);
      await target.flush();
    };
  }
  return t;
}
