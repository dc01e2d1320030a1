/** discard, flush, aio_flush and truncate. */
import { parsePreallocation, resizeImage, type Preallocation } from '../../node.js';
import { err, messageOf, out, PROG } from '../common.js';
import { cmdGetopt, image, usage, type Command } from './command.js';
import { errnoText } from './errno.js';
import { cvtnum, cvtnumErr, offsetAndCount } from './numbers.js';
import { outOfRange } from './read.js';
import { report, since } from './report.js';

export const discardCmd: Command = {
  name: 'discard',
  altname: 'd',
  argmin: 2,
  argmax: -1,
  args: '[-Cq] off len',
  oneline: 'discards a number of bytes at a specified offset',
  writes: true,
  async run(s, argv) {
    const img = image(s);
    const p = cmdGetopt(argv, 'Cq');
    if (!p || p.operands.length !== 2) {
      usage(discardCmd);
      return -22;
    }
    const parsable = p.opts.some(([c]) => c === 'C');
    const quiet = p.opts.some(([c]) => c === 'q');
    const parsed = offsetAndCount(p.operands as [string, string]);
    if (typeof parsed === 'number') return parsed;
    const [offset, count] = parsed;
    const t1 = performance.now();
    let failure: string | undefined;
    if (outOfRange(img, offset, count)) failure = 'Input/output error';
    else {
      try {
        // discard=ignore is the image's own setting (OpenOptions.discard).
        await img.discard(offset, count);
      } catch (e) {
        failure = errnoText(e);
      }
    }
    const seconds = since(t1);
    if (failure !== undefined) {
      out(`discard failed: ${failure}\n`);
      return -5;
    }
    if (!quiet) out(report('discard', seconds, offset, count, count, 1, parsable));
    return 0;
  },
};

export const flushCmd: Command = {
  name: 'flush',
  altname: 'f',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'flush all in-core file state to disk',
  async run(s) {
    try {
      await image(s).flush();
      return 0;
    } catch {
      return -5;
    }
  },
};

export const aioFlushCmd: Command = {
  name: 'aio_flush',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'completes all outstanding aio requests',
  // Requests complete before the next command starts, so there is nothing to wait for.
  run: async () => 0,
};

export const truncateCmd: Command = {
  name: 'truncate',
  altname: 't',
  argmin: 1,
  argmax: 3,
  args: '[-m prealloc_mode] off',
  oneline: 'truncates the current file at the given offset',
  writes: true,
  async run(s, argv) {
    const p = cmdGetopt(argv, 'm:');
    if (!p) {
      usage(truncateCmd);
      return -22;
    }
    let preallocation: Preallocation = 'off';
    for (const [c, v] of p.opts) {
      if (c !== 'm') continue;
      try {
        preallocation = parsePreallocation(v ?? '');
      } catch (e) {
        err(`${PROG}: ${messageOf(e)}\n`);
        return -22;
      }
    }
    const arg = p.operands[0] ?? '';
    const offset = cvtnum(arg);
    if (offset < 0) {
      cvtnumErr(offset, arg);
      return offset;
    }
    // As qemu-io: no shrink guard, the driver's own rules and words.
    try {
      await resizeImage(image(s), offset, { shrink: true, preallocation });
    } catch (e) {
      err(`${PROG}: ${messageOf(e)}\n`);
      return -22;
    }
    return 0;
  },
};
