/** map, alloc, length and info: what the open image says about itself. */
import type { Image } from '../../node.js';
import { err, out, PROG } from '../common.js';
import { cvtstr } from '../format.js';
import { dumpQObject } from '../img/info.js';
import { image, type Command } from './command.js';
import { cvtnum, cvtnumErr } from './numbers.js';

/** bdrv_is_allocated: this layer only, stopping at the image end. */
async function isAllocated(img: Image, offset: number, bytes: number): Promise<{ allocated: boolean; num: number }> {
  if (offset >= img.size || bytes === 0) return { allocated: false, num: 0 };
  const st = await img.layerStatus(offset, Math.min(bytes, img.size - offset));
  return { allocated: st.allocated, num: st.length };
}

export const mapCmd: Command = {
  name: 'map',
  altname: 'm',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'prints the allocated areas of a file',
  async run(s) {
    const img = image(s);
    let offset = 0;
    let bytes = img.size;
    while (bytes > 0) {
      const first = await isAllocated(img, offset, bytes);
      let num = first.num;
      while (offset + num < img.size) {
        const n = await isAllocated(img, offset + num, bytes - num);
        if (n.allocated !== first.allocated || n.num === 0) break;
        num += n.num;
      }
      if (num === 0) {
        err(`${PROG}: Unexpected end of image\n`);
        return -5;
      }
      const state = first.allocated ? '    allocated' : 'not allocated';
      out(`${cvtstr(num)} (0x${num.toString(16)}) bytes ${state} at offset ${cvtstr(offset)} (0x${offset.toString(16)})\n`);
      offset += num;
      bytes -= num;
    }
    return 0;
  },
};

export const allocCmd: Command = {
  name: 'alloc',
  altname: 'a',
  argmin: 1,
  argmax: 2,
  args: 'offset [count]',
  oneline: 'checks if offset is allocated in the file',
  async run(s, argv) {
    const img = image(s);
    const start = cvtnum(argv[1]!);
    if (start < 0) {
      cvtnumErr(start, argv[1]!);
      return start;
    }
    let count = 512;
    if (argv.length === 3) {
      count = cvtnum(argv[2]!);
      if (count < 0) {
        cvtnumErr(count, argv[2]!);
        return count;
      }
    }
    let offset = start;
    let remaining = count;
    let sum = 0;
    while (remaining) {
      const r = await isAllocated(img, offset, remaining);
      offset += r.num;
      remaining -= r.num;
      if (r.allocated) sum += r.num;
      if (r.num === 0) {
        count -= remaining;
        remaining = 0;
      }
    }
    out(`${sum}/${count} bytes allocated at offset ${cvtstr(start)}\n`);
    return 0;
  },
};

export const lengthCmd: Command = {
  name: 'length',
  altname: 'l',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'gets the length of the current file',
  async run(s) {
    out(`${cvtstr(image(s).size)}\n`);
    return 0;
  },
};

export const infoCmd: Command = {
  name: 'info',
  altname: 'i',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'prints information about the current file',
  async run(s) {
    const img = image(s);
    const info = await img.info();
    out(`format name: ${img.format}\n`);
    const cluster = info['cluster-size'] ?? 0;
    let vmState = 0;
    const spec = info['format-specific'];
    if (img.format === 'qcow2' && cluster > 0) {
      // qcow2 keeps VM state after the last L2-covered byte of the guest.
      const entry = spec?.data['extended-l2'] === true ? 16 : 8;
      const perL1 = cluster * (cluster / entry);
      vmState = Math.ceil(img.size / perL1) * perL1;
    }
    out(`cluster size: ${cvtstr(cluster)}\n`);
    out(`vm state offset: ${cvtstr(vmState)}\n`);
    if (spec) out('Format specific information:\n' + dumpQObject(spec.data, 1));
    return 0;
  },
};
