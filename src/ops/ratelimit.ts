/**
 * convert -r: qemu-img puts a write-bytes-per-second throttle on the target
 * (a leaky bucket, every write and write-zeroes counted). A request waits
 * until the bucket has drained to its burst allowance (a tenth of a
 * second's worth), so a long copy runs at `rate` bytes per second.
 */
import type { ConvertTarget } from './convert.js';

export function rateLimited(target: ConvertTarget, rate: number, now: () => number = () => performance.now()): ConvertTarget {
  const burst = rate / 10;
  let level = 0;
  let last = now();
  const drain = (): void => {
    const t = now();
    level = Math.max(0, level - ((t - last) / 1000) * rate);
    last = t;
  };
  const admit = async (bytes: number): Promise<void> => {
    drain();
    while (level > burst) {
      await new Promise((r) => setTimeout(r, Math.ceil(((level - burst) / rate) * 1000)));
      drain();
    }
    level += bytes;
  };
  const limited: ConvertTarget = {
    write: async (offset, data) => {
      await admit(data.length);
      return target.write(offset, data);
    },
    flush: () => target.flush(),
    close: () => target.close(),
  };
  if (target.writeCompressed) {
    const wc = target.writeCompressed.bind(target);
    limited.writeCompressed = async (offset, data) => {
      await admit(data.length);
      return wc(offset, data);
    };
  }
  if (target.writeZeroes) {
    const wz = target.writeZeroes.bind(target);
    limited.writeZeroes = async (offset, length) => {
      await admit(length);
      return wz(offset, length);
    };
  }
  return limited;
}
