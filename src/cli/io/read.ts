/** read, readv and aio_read: guest bytes read, verified against a pattern, dumped. */
import type { Image } from '../../node.js';
import { out } from '../common.js';
import { cmdGetopt, image, usage, type Command } from './command.js';
import { errnoText } from './errno.js';
import { cvtnum, cvtnumErr, offsetAndCount, parsePattern, vectorLength } from './numbers.js';
import { dumpBuffer, report, since } from './report.js';

/** blk_check_byte_request: requests past the end fail with EIO. */
export const outOfRange = (img: Image, offset: number, count: number): boolean => offset > img.size || img.size - offset < count;

/** One read into a buffer qemu-io pre-fills with 0xab; the failure text, or undefined. */
async function readInto(img: Image, offset: number, buf: Uint8Array): Promise<string | undefined> {
  if (outOfRange(img, offset, buf.length)) return 'Input/output error';
  try {
    if (buf.length > 0) await img.read(offset, buf);
  } catch (e) {
    return errnoText(e);
  }
  return undefined;
}

/** -b: the VM state area. qimg keeps none, so every format refuses it as qemu's formats without one do. */
const VMSTATE_UNSUPPORTED = 'Operation not supported';

export const readCmd: Command = {
  name: 'read',
  altname: 'r',
  argmin: 2,
  argmax: -1,
  args: '[-abCqv] [-P pattern [-s off] [-l len]] off len',
  oneline: 'reads a number of bytes at a specified offset',
  async run(s, argv) {
    const img = image(s);
    const p = cmdGetopt(argv, 'bCl:pP:qs:v');
    if (!p) {
      usage(readCmd);
      return -22;
    }
    let parsable = false;
    let quiet = false;
    let verbose = false;
    let vmstate = false;
    let pattern = -1;
    let lflag = false;
    let sflag = false;
    let patternOffset = 0;
    let patternCount = 0;
    for (const [c, v] of p.opts) {
      switch (c) {
        case 'b':
          vmstate = true;
          break;
        case 'C':
          parsable = true;
          break;
        case 'l':
          lflag = true;
          patternCount = cvtnum(v!);
          if (patternCount < 0) {
            cvtnumErr(patternCount, v!);
            return patternCount;
          }
          break;
        case 'P':
          pattern = parsePattern(v!);
          if (pattern < 0) return -22;
          break;
        case 'q':
          quiet = true;
          break;
        case 's':
          sflag = true;
          patternOffset = cvtnum(v!);
          if (patternOffset < 0) {
            cvtnumErr(patternOffset, v!);
            return patternOffset;
          }
          break;
        case 'v':
          verbose = true;
          break;
      }
    }
    if (p.operands.length !== 2) {
      usage(readCmd);
      return -22;
    }
    const parsed = offsetAndCount(p.operands as [string, string]);
    if (typeof parsed === 'number') return parsed;
    const [offset, count] = parsed;
    if (pattern < 0 && (lflag || sflag)) {
      usage(readCmd);
      return -22;
    }
    if (!lflag) patternCount = count - patternOffset;
    if (patternCount < 0 || patternCount + patternOffset > count) {
      out('pattern verification range exceeds end of read data\n');
      return -22;
    }
    if (vmstate) {
      out(`read failed: ${VMSTATE_UNSUPPORTED}\n`);
      return -95;
    }
    const buf = new Uint8Array(count).fill(0xab);
    const t1 = performance.now();
    const failure = await readInto(img, offset, buf);
    const seconds = since(t1);
    if (failure !== undefined) {
      out(`read failed: ${failure}\n`);
      return -5;
    }
    let ret = 0;
    if (pattern >= 0) {
      const part = buf.subarray(patternOffset, patternOffset + patternCount);
      if (part.some((b) => b !== pattern)) {
        out(`Pattern verification failed at offset ${offset + patternOffset}, ${patternCount} bytes\n`);
        ret = -22;
      }
    }
    if (quiet) return ret;
    if (verbose) out(dumpBuffer(buf, offset));
    out(report('read', seconds, offset, count, count, 1, parsable));
    return ret;
  },
};

/**
 * readv and aio_read: one request over several buffers (`off len [len..]`).
 * aio_read reports its failure and still counts as submitted (status 0).
 */
function vectoredRead(name: string, aio: boolean): Command {
  const ct: Command = {
    name,
    argmin: 2,
    argmax: -1,
    args: aio ? '[-Ciqv] [-P pattern] off len [len..]' : '[-Cqv] [-P pattern] off len [len..]',
    oneline: aio ? 'asynchronously reads a number of bytes' : 'reads a number of bytes at a specified offset',
    async run(s, argv) {
      const img = image(s);
      const p = cmdGetopt(argv, aio ? 'CiP:qv' : 'CP:qv');
      if (!p) {
        usage(ct);
        return -22;
      }
      let parsable = false;
      let quiet = false;
      let verbose = false;
      let pattern = -1;
      for (const [c, v] of p.opts) {
        if (c === 'C') parsable = true;
        else if (c === 'q') quiet = true;
        else if (c === 'v') verbose = true;
        // -i: an invalid request, only counted in the statistics qemu-io keeps for a VM.
        else if (c === 'i') {
          out('injecting invalid read request\n');
          return 0;
        }
        else if (c === 'P') {
          pattern = parsePattern(v!);
          if (pattern < 0) return -22;
        }
      }
      if (p.operands.length < 2) {
        usage(ct);
        return -22;
      }
      const offArg = p.operands[0]!;
      const offset = cvtnum(offArg);
      if (offset < 0) {
        cvtnumErr(offset, offArg);
        return offset;
      }
      const count = vectorLength(p.operands.slice(1));
      if (count < 0) return count;
      const buf = new Uint8Array(count).fill(0xab);
      const t1 = performance.now();
      const failure = await readInto(img, offset, buf);
      const seconds = since(t1);
      if (failure !== undefined) {
        out(`readv failed: ${failure}\n`);
        return aio ? 0 : -5;
      }
      let ret = 0;
      if (pattern >= 0 && buf.some((b) => b !== pattern)) {
        out(`Pattern verification failed at offset ${offset}, ${count} bytes\n`);
        ret = aio ? 0 : -22;
      }
      if (quiet) return ret;
      if (verbose) out(dumpBuffer(buf, offset));
      out(report('read', seconds, offset, count, count, 1, parsable));
      return ret;
    },
  };
  return ct;
}

export const readvCmd = vectoredRead('readv', false);
export const aioReadCmd = vectoredRead('aio_read', true);
