/**
 * qimg io: qemu-io's command language on one open image. Each command's
 * output is written as soon as it completes, in qemu-io's exact words.
 */
import { createInterface } from 'node:readline';
import type { Image } from '../../node.js';
import { parseFormatName } from '../../node.js';
import { openImageFile, parseOpenTarget, type OpenFileOptions, type OpenTarget } from '../../node.js';
import { ObjectStore } from '../objects.js';
import { readFileSync } from 'node:fs';
import { isImageError, parsePreallocation, resizeImage, type Preallocation } from '../../node.js';
import { CliError, err, messageOf, out, PROG, probedRawWarning, strerror } from '../common.js';
import { cvtstr, timestr, toFixedC } from '../format.js';
import { dumpQObject } from '../img/info.js';
import { getopt, parseSize } from '../options.js';
import { dropsFlushes, flushesEachWrite, parseCacheMode, type CacheMode } from '../../node.js';

export const ioHelp = `usage: qimg io [--object objectdef] [--image-opts] [-f fmt] [-r] [-s] [-U] [-d discard] [-t cache] [-c command]... [file]

Run qemu-io commands on an image; without -c, commands are read from stdin.
  -c, --cmd=STRING   command to run (repeatable), e.g. -c 'read -P 0 0 64k'
  -f, --format=FMT   image format (raw, qcow2, qed); probed when absent
  -r, --read-only    open read-only (default: read-write)
  -s, --snapshot     writes go to a temporary overlay; the image itself is not changed
  -d, --discard=MODE ignore|off (discard requests do nothing) or unmap|on (the default)
  -t, --cache=MODE   writeback (default), none, writethrough or directsync (each write command
                     is flushed before it completes), unsafe (flushes do nothing)
  -n, --nocache      short for -t none
  -m, --misalign     accepted: qimg's requests need no buffer alignment
  -T, --trace=EVENT  qimg has no trace events; warns as qemu-io does for an unknown one
  -U, --force-share  with -r: open even while another process writes the image
  --object OBJDEF    secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret that
                     key-secret options name (the only object type)
  --image-opts       the file name is an option string: driver=FMT,file.filename=PATH,...

Commands: read [-Cqv] [-P pattern [-s off] [-l len]] off len, write [-cCqzu] [-P pattern] off len,
  discard [-Cq] off len, flush, aio_write, aio_flush, truncate [-m mode] off, abort, map, alloc off [count], length,
  info, help, quit
`;

/** BDRV_REQUEST_MAX_BYTES */
const MAX_REQUEST = 2147483136;

interface Command {
  name: string;
  altname?: string;
  argmin: number;
  argmax: number;
  args: string;
  oneline: string;
  /** Needs a writable image (qemu-io's BLK_PERM_WRITE). */
  writes?: boolean;
  run(img: Image, argv: string[]): Promise<number>;
}

/** qemu-io's cvtnum: a size, or a negative errno-like code. */
function cvtnum(s: string): number {
  const v = parseSize(s);
  if (v === undefined) return -22;
  if (v > Number.MAX_SAFE_INTEGER) return -34;
  return v;
}

function cvtnumErr(rc: number, arg: string): void {
  if (rc === -22) out(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${arg}\n`);
  else if (rc === -34) out(`Parsing error: argument too large -- ${arg}\n`);
  else out(`Parsing error: ${arg}\n`);
}

/** The offset and count operands of read and discard, with qemu-io's messages; a negative errno on error. */
function offsetAndCount([offArg, countArg]: [string, string]): [number, number] | number {
  const offset = cvtnum(offArg);
  if (offset < 0) {
    cvtnumErr(offset, offArg);
    return offset;
  }
  const count = cvtnum(countArg);
  if (count < 0) {
    cvtnumErr(count, countArg);
    return count;
  } else if (count > MAX_REQUEST) {
    out(`length cannot exceed ${MAX_REQUEST}, given ${countArg}\n`);
    return -22;
  }
  return [offset, count];
}

/** strtol(arg, &end, 0) for 0..255. */
function parsePattern(arg: string): number {
  let v: number;
  if (/^[+]?0[xX][0-9a-fA-F]+$/.test(arg)) v = parseInt(arg.replace('+', ''), 16);
  else if (/^[+]?0[0-7]*$/.test(arg)) v = parseInt(arg.replace('+', ''), 8);
  else if (/^[+-]?\d+$/.test(arg)) v = parseInt(arg, 10);
  else v = NaN;
  if (!(v >= 0 && v <= 255)) {
    out(`${arg} is not a valid pattern byte\n`);
    return -1;
  }
  return v;
}

/** glibc getopt for one command's argv (argv[0] is the command name); permutes operands. */
function cmdGetopt(argv: string[], optstring: string): { opts: [string, string | undefined][]; operands: string[] } | undefined {
  const takesArg = (c: string): boolean | undefined => {
    const i = optstring.indexOf(c);
    return i < 0 || c === ':' ? undefined : optstring[i + 1] === ':';
  };
  const opts: [string, string | undefined][] = [];
  const operands: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a === '-') {
      operands.push(a);
      continue;
    }
    for (let j = 1; j < a.length; j++) {
      const c = a[j]!;
      const t = takesArg(c);
      if (t === undefined) {
        err(`${argv[0]}: invalid option -- '${c}'\n`);
        return undefined;
      }
      if (!t) {
        opts.push([c, undefined]);
        continue;
      }
      if (j + 1 < a.length) opts.push([c, a.slice(j + 1)]);
      else if (i + 1 < argv.length) opts.push([c, argv[++i]!]);
      else {
        err(`${argv[0]}: option requires an argument -- '${c}'\n`);
        return undefined;
      }
      break;
    }
  }
  return { opts, operands };
}

const usage = (ct: Command): void => out(`${ct.name} ${ct.args} -- ${ct.oneline}\n`);

/** qemu-io's dump_buffer: 16 bytes a line, isalnum() characters shown. */
export function dumpBuffer(buf: Uint8Array, offset: number): string {
  let s = '';
  for (let i = 0; i < buf.length; i += 16) {
    const row = buf.subarray(i, Math.min(i + 16, buf.length));
    s += (offset + i).toString(16).padStart(8, '0') + ':  ';
    for (const b of row) s += b.toString(16).padStart(2, '0') + ' ';
    s += ' ';
    for (const b of row) s += (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) ? String.fromCharCode(b) : '.';
    s += '\n';
  }
  return s;
}

/** qemu-io's print_report. */
export function report(op: string, seconds: number, offset: number, count: number, total: number, cnt: number, parsable: boolean): string {
  const secs = Math.max(seconds, 1e-9);
  if (parsable) {
    return `${total},${cnt},${timestr(seconds, true)},${toFixedC(total / secs, 3)},${toFixedC(cnt / secs, 3)}\n`;
  }
  return `${op} ${total}/${count} bytes at offset ${offset}\n${cvtstr(total)}, ${cnt} ops; ${timestr(seconds)} (${cvtstr(total / secs)}/sec and ${toFixedC(cnt / secs, 4)} ops/sec)\n`;
}

const readCmd: Command = {
  name: 'read',
  altname: 'r',
  argmin: 2,
  argmax: -1,
  args: '[-abCqv] [-P pattern [-s off] [-l len]] off len',
  oneline: 'reads a number of bytes at a specified offset',
  async run(img, argv) {
    const p = cmdGetopt(argv, 'bCl:pP:qs:v');
    if (!p) {
      usage(readCmd);
      return -22;
    }
    let parsable = false;
    let quiet = false;
    let verbose = false;
    let pattern = -1;
    let lflag = false;
    let sflag = false;
    let patternOffset = 0;
    let patternCount = 0;
    for (const [c, v] of p.opts) {
      switch (c) {
        case 'b':
          out('vmstate reads are not supported\n');
          return -95;
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
    const buf = new Uint8Array(count).fill(0xab);
    const t1 = performance.now();
    if (offset > img.size || img.size - offset < count) {
      out('read failed: Input/output error\n');
      return -5;
    }
    try {
      if (count > 0) await img.read(offset, buf);
    } catch (e) {
      out(`read failed: ${errnoText(e)}\n`);
      return -5;
    }
    const seconds = (performance.now() - t1) / 1000;
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

/** bdrv_is_allocated: this layer only, stopping at the image end. */
async function isAllocated(img: Image, offset: number, bytes: number): Promise<{ allocated: boolean; num: number }> {
  if (offset >= img.size || bytes === 0) return { allocated: false, num: 0 };
  const st = await img.layerStatus(offset, Math.min(bytes, img.size - offset));
  return { allocated: st.allocated, num: st.length };
}

const mapCmd: Command = {
  name: 'map',
  altname: 'm',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'prints the allocated areas of a file',
  async run(img) {
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
        err('qimg: Unexpected end of image\n');
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

const allocCmd: Command = {
  name: 'alloc',
  altname: 'a',
  argmin: 1,
  argmax: 2,
  args: 'offset [count]',
  oneline: 'checks if offset is allocated in the file',
  async run(img, argv) {
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

const lengthCmd: Command = {
  name: 'length',
  altname: 'l',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'gets the length of the current file',
  async run(img) {
    out(`${cvtstr(img.size)}\n`);
    return 0;
  },
};

const infoCmd: Command = {
  name: 'info',
  altname: 'i',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'prints information about the current file',
  async run(img) {
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

/** strerror() of a failed request: the block layer's errors carry errno-like meanings. */
function errnoText(e: unknown): string {
  // A host failure carries its own errno (ENOSPC: "No space left on device").
  if (isImageError(e, 'io') && e.errno !== undefined) return strerror(e);
  const msg = messageOf(e);
  if (KNOWN_ERRNO_TEXT.has(msg)) return msg;
  if (isImageError(e, 'unsupported')) return 'Operation not supported';
  if (isImageError(e, 'bad-argument')) return 'Invalid argument';
  if (isImageError(e, 'read-only')) return 'Operation not permitted';
  if (isImageError(e, 'io', 'corrupt', 'invalid')) return 'Input/output error';
  return strerror(e);
}
const KNOWN_ERRNO_TEXT = new Set([
  'Input/output error',
  'Invalid argument',
  'Operation not supported',
  'Operation not permitted',
  'No space left on device',
  'Numerical result out of range',
  'Permission denied',
]);

/** blk_check_byte_request: requests past the end fail with EIO. */
const outOfRange = (img: Image, offset: number, count: number): boolean => offset > img.size || img.size - offset < count;

/** qemu_io_alloc_from_file: the file's bytes, repeated to fill the buffer. */
function patternFromFile(name: string, count: number): Uint8Array | undefined {
  let src: Uint8Array;
  try {
    src = readFileSync(name);
  } catch (e) {
    // perror(), as qemu-io does
    err(`${name}: ${strerror(e)}\n`);
    return undefined;
  }
  const buf = new Uint8Array(count);
  if (src.length === 0) return buf;
  for (let p = 0; p < count; p += src.length) buf.set(src.subarray(0, Math.min(src.length, count - p)), p);
  return buf;
}

interface WriteRequest {
  offset: number;
  count: number;
  zero: boolean;
  compressed: boolean;
  mayUnmap: boolean;
  data?: Uint8Array;
}

/** Parse write/aio_write options the way qemu-io's write_f does; undefined after printing why. */
function parseWrite(ct: Command, argv: string[], optstring: string, aio: boolean): { req: WriteRequest; quiet: boolean; parsable: boolean; ret?: never } | { ret: number } {
  const p = cmdGetopt(argv, optstring);
  if (!p) {
    usage(ct);
    return { ret: -22 };
  }
  let bflag = false;
  let cflag = false;
  let parsable = false;
  let fua = false;
  let noFallback = false;
  let pflag = false;
  let quiet = false;
  let sflag = false;
  let mayUnmap = false;
  let zflag = false;
  let pattern = 0xcd;
  let fileName = '';
  for (const [c, v] of p.opts) {
    switch (c) {
      case 'b':
        bflag = true;
        break;
      case 'c':
        cflag = true;
        break;
      case 'C':
        parsable = true;
        break;
      case 'f':
        fua = true;
        break;
      case 'n':
        noFallback = true;
        break;
      case 'P':
        pflag = true;
        pattern = parsePattern(v!);
        if (pattern < 0) return { ret: -22 };
        break;
      case 'q':
        quiet = true;
        break;
      case 's':
        sflag = true;
        fileName = v!;
        break;
      case 'u':
        mayUnmap = true;
        break;
      case 'z':
        zflag = true;
        break;
    }
  }
  if (aio ? p.operands.length < 2 : p.operands.length !== 2) {
    usage(ct);
    return { ret: -22 };
  }
  if (bflag && zflag) {
    out('-b and -z cannot be specified at the same time\n');
    return { ret: -22 };
  }
  if (fua && (bflag || cflag)) {
    out('-f and -b or -c cannot be specified at the same time\n');
    return { ret: -22 };
  }
  if (noFallback && !zflag) {
    out('-n requires -z to be specified\n');
    return { ret: -22 };
  }
  if (mayUnmap && !zflag) {
    out('-u requires -z to be specified\n');
    return { ret: -22 };
  }
  if (Number(zflag) + Number(pflag) + Number(sflag) > 1) {
    out('Only one of -z, -P, and -s can be specified at the same time\n');
    return { ret: -22 };
  }
  const offArg = p.operands[0]!;
  const offset = cvtnum(offArg);
  if (offset < 0) {
    cvtnumErr(offset, offArg);
    return { ret: offset };
  }
  // aio_write takes several lengths (a vector); they are written as one request.
  let count = 0;
  for (const countArg of p.operands.slice(1)) {
    const n = cvtnum(countArg);
    if (n < 0) {
      cvtnumErr(n, countArg);
      return { ret: n };
    }
    if (n > MAX_REQUEST && !noFallback) {
      out(`length cannot exceed ${MAX_REQUEST} without -n, given ${countArg}\n`);
      return { ret: -22 };
    }
    count += n;
  }
  if (bflag || cflag) {
    if (offset % 512 !== 0) {
      out(`${offset} is not a sector-aligned value for 'offset'\n`);
      return { ret: -22 };
    }
    if (count % 512 !== 0) {
      out(`${count} is not a sector-aligned value for 'count'\n`);
      return { ret: -22 };
    }
  }
  if (bflag) {
    out('write failed: Operation not supported\n');
    return { ret: -95 };
  }
  let data: Uint8Array | undefined;
  if (!zflag) {
    if (sflag) {
      data = patternFromFile(fileName, count);
      if (!data) return { ret: -22 };
    } else {
      data = new Uint8Array(count).fill(pattern);
    }
  }
  return { req: { offset, count, zero: zflag, compressed: cflag && !zflag, mayUnmap, data }, quiet, parsable };
}

async function doWrite(img: Image, r: WriteRequest): Promise<string | undefined> {
  if (outOfRange(img, r.offset, r.count)) return 'Input/output error';
  try {
    if (r.zero) await img.writeZeroes(r.offset, r.count, { mayUnmap: r.mayUnmap });
    else if (r.compressed) {
      // Only qcow2 stores compressed clusters (bdrv_pwrite_compressed is ENOTSUP elsewhere).
      if (img.format !== 'qcow2') return 'Operation not supported';
      await img.write(r.offset, r.data!, { compressed: true });
    } else await img.write(r.offset, r.data!);
  } catch (e) {
    return errnoText(e);
  }
  return undefined;
}

function writeCommand(name: string, altname: string | undefined, aio: boolean): Command {
  const ct: Command = {
    name,
    altname,
    argmin: 2,
    argmax: -1,
    args: aio ? '[-Cfiquz] [-P pattern] off len [len..]' : '[-bcCfnquz] [-P pattern] off len',
    oneline: aio ? 'asynchronously writes a number of bytes' : 'writes a number of bytes at a specified offset',
    writes: true,
    async run(img, argv) {
      const parsed = parseWrite(ct, argv, aio ? 'CfiqP:uz' : 'bcCfnpP:qs:uz', aio);
      if (parsed.ret !== undefined) return parsed.ret;
      const { req, quiet, parsable } = parsed;
      const t1 = performance.now();
      const failure = await doWrite(img, req);
      const seconds = (performance.now() - t1) / 1000;
      if (failure !== undefined) {
        out(`${aio ? 'aio_write' : 'write'} failed: ${failure}\n`);
        return -5;
      }
      if (!quiet) out(report('wrote', seconds, req.offset, req.count, req.count, 1, parsable));
      return 0;
    },
  };
  return ct;
}

const writeCmd = writeCommand('write', 'w', false);
const aioWriteCmd = writeCommand('aio_write', undefined, true);

/** Images opened with -d ignore: discard succeeds and changes nothing, as in qemu. */
const discardsIgnored = new WeakSet<Image>();

const discardCmd: Command = {
  name: 'discard',
  altname: 'd',
  argmin: 2,
  argmax: -1,
  args: '[-Cq] off len',
  oneline: 'discards a number of bytes at a specified offset',
  writes: true,
  async run(img, argv) {
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
        if (!discardsIgnored.has(img)) await img.discard(offset, count);
      } catch (e) {
        failure = errnoText(e);
      }
    }
    const seconds = (performance.now() - t1) / 1000;
    if (failure !== undefined) {
      out(`discard failed: ${failure}\n`);
      return -5;
    }
    if (!quiet) out(report('discard', seconds, offset, count, count, 1, parsable));
    return 0;
  },
};

async function flushImage(img: Image): Promise<number> {
  try {
    await img.flush();
    return 0;
  } catch {
    return -5;
  }
}

const flushCmd: Command = {
  name: 'flush',
  altname: 'f',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'flush all in-core file state to disk',
  run: (img) => flushImage(img),
};

const aioFlushCmd: Command = {
  name: 'aio_flush',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'completes all outstanding aio requests',
  // Requests complete before the next command starts, so there is nothing to wait for.
  run: async () => 0,
};

const truncateCmd: Command = {
  name: 'truncate',
  altname: 't',
  argmin: 1,
  argmax: 3,
  args: '[-m prealloc_mode] off',
  oneline: 'truncates the current file at the given offset',
  writes: true,
  async run(img, argv) {
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
      await resizeImage(img, offset, { shrink: true, preallocation });
    } catch (e) {
      err(`${PROG}: ${messageOf(e)}\n`);
      return -22;
    }
    return 0;
  },
};

const abortCmd: Command = {
  name: 'abort',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'simulate a program crash using abort(3)',
  async run() {
    // As qemu-io: die at once, nothing flushed or closed (crash simulation). SIGABRT gives exit status 134.
    process.kill(process.pid, 'SIGABRT');
    return new Promise<number>(() => {});
  },
};

const COMMANDS: Command[] = [readCmd, writeCmd, aioWriteCmd, aioFlushCmd, discardCmd, flushCmd, truncateCmd, abortCmd, mapCmd, allocCmd, lengthCmd, infoCmd];

/** qemu's breakline: split on spaces, dropping empty words. */
const breakline = (line: string): string[] => line.split(' ').filter((w) => w !== '');

/** Run one command line; negative when it failed. Returns 'quit' to stop. */
export async function runCommand(img: Image, line: string): Promise<number | 'quit'> {
  const argv = breakline(line);
  if (argv.length === 0) return 0;
  const name = argv[0]!;
  if (name === 'quit' || name === 'q') return 'quit';
  if (name === 'help' || name === '?') {
    for (const c of COMMANDS) out(`${c.name} ${c.args} -- ${c.oneline}\n`);
    out('\nUse \'help commandname\' for extended help.\n');
    return 0;
  }
  const ct = COMMANDS.find((c) => c.name === name || c.altname === name);
  if (!ct) {
    err(`command "${name}" not found\n`);
    return -22;
  }
  const n = argv.length - 1;
  if (n < ct.argmin || (ct.argmax !== -1 && n > ct.argmax)) {
    if (ct.argmax === -1) err(`bad argument count ${n} to ${name}, expected at least ${ct.argmin} arguments\n`);
    else if (ct.argmin === ct.argmax) err(`bad argument count ${n} to ${name}, expected ${ct.argmin} arguments\n`);
    else err(`bad argument count ${n} to ${name}, expected between ${ct.argmin} and ${ct.argmax} arguments\n`);
    return -22;
  }
  if (ct.writes && !img.driver.writable) {
    err(`${PROG}: Block node is read-only\n`);
    return -1;
  }
  const r = await ct.run(img, argv);
  // writethrough/directsync: a write command completes only once it is on stable storage.
  if (ct.writes && writethrough.has(img)) await img.flush();
  return r;
}

/** Images opened with -t writethrough or directsync. */
const writethrough = new WeakSet<Image>();

export async function cmdIo(args: string[]): Promise<number> {
  // -C (copy-on-read) and -k (native AIO) are not offered: qimg cannot do
  // what they promise, so they are refused as unknown options.
  const { options, operands } = getopt(args, 'hVc:d:f:rsnmt:T:U', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'cmd', arg: 'required', key: 'c' },
    { name: 'read-only', arg: 'none', key: 'r' },
    { name: 'snapshot', arg: 'none', key: 's' },
    { name: 'nocache', arg: 'none', key: 'n' },
    { name: 'cache', arg: 'required', key: 't' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'trace', arg: 'required', key: 'T' },
    { name: 'discard', arg: 'required', key: 'd' },
    { name: 'misalign', arg: 'none', key: 'm' },
  ]);
  const cmds: string[] = [];
  let format: string | undefined;
  let readOnly = false;
  let imageOpts = false;
  const objects = new ObjectStore();
  let snapshot = false;
  let discard = true; // qemu-io opens with discard=unmap
  let cache: CacheMode = 'writeback';
  for (const o of options) {
    switch (o.key) {
      case 'h':
        out(ioHelp);
        return 0;
      case 'c':
        cmds.push(o.value!);
        break;
      case 'f':
        format = o.value;
        break;
      case 'r':
        readOnly = true;
        break;
      case 's':
        snapshot = true;
        break;
      case 'd':
        if (o.value === 'ignore' || o.value === 'off') discard = false;
        else if (o.value === 'unmap' || o.value === 'on') discard = true;
        else throw new CliError(`Invalid discard option: ${o.value}`);
        break;
      case 't': {
        const mode = parseCacheMode(o.value!);
        if (mode === undefined) throw new CliError(`Invalid cache option: ${o.value}`);
        cache = mode;
        break;
      }
      case 'n':
        // cache=none: bypassing the page cache changes nothing that is read or written (see io/cache.ts).
        cache = 'none';
        break;
      case 'm':
        // Misaligned buffers: qimg's requests have no alignment to break, so
        // every request already takes the path -m is meant to exercise.
        break;
      case 'T':
        // qimg has no trace events: qemu's warning for a pattern that matches none.
        err(`${PROG}: warning: trace event '${o.value}' does not exist\n`);
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
    }
  }
  if (operands.length > 1) throw new CliError('too many arguments', 1);
  if (operands.length === 0) {
    out("no file open, try 'help open'\n");
    return cmds.length > 0 ? 1 : 0;
  }
  const path = operands[0]!;
  if (imageOpts && format !== undefined) throw new CliError('--image-opts and -f are mutually exclusive');
  // qemu-io names no device for an --image-opts open that fails.
  const cantOpen = imageOpts ? "can't open" : `can't open device ${path}`;
  let fmt;
  let file = path;
  let access: Pick<OpenFileOptions, 'blockOptions' | 'locking'> = {};
  if (imageOpts) {
    let target: OpenTarget;
    try {
      target = parseOpenTarget(path);
    } catch (e) {
      throw new CliError(`${cantOpen}: ${messageOf(e)}`, 1, { cause: e });
    }
    for (const key of target.shortForm) err(`${PROG}: warning: short-form boolean option '${key}' deprecated\nPlease use ${key}=on instead\n`);
    if (target.readOnly && !readOnly) throw new CliError(`${cantOpen}: Block node is read-only`);
    ({ path: file, format: fmt } = target);
    access = { blockOptions: target.blockOptions, locking: target.locking };
  } else if (format !== undefined) {
    fmt = parseFormatName(format);
    if (fmt === undefined) throw new CliError(`${cantOpen}: Unknown driver '${format}'`);
  }
  let img: Image;
  try {
    // qemu-io opens read-write unless -r is given; -s puts writes in a temporary overlay.
    img = await openImageFile(file, { format: fmt, writable: !readOnly, snapshot, unsafe: dropsFlushes(cache), forceShare: options.some((o) => o.key === 'U'), secrets: objects.secrets, ...access, onWarning: err });
  } catch (e) {
    throw new CliError(`${cantOpen}: ${messageOf(e)}`, 1, { cause: e });
  }
  if (!discard) discardsIgnored.add(img);
  if (flushesEachWrite(cache)) writethrough.add(img);
  if (!readOnly && !snapshot && fmt === undefined && !imageOpts && img.format === 'raw') err(probedRawWarning(path));
  let failed = false;
  try {
    const lines: AsyncIterable<string> | string[] = cmds.length > 0 ? cmds : createInterface({ input: process.stdin, terminal: false });
    for await (const line of lines) {
      const r = await runCommand(img, line);
      if (r === 'quit') break;
      if (r < 0) failed = true;
    }
  } finally {
    // Closing writes the last metadata; a failure there is the user's data
    // not reaching the disk, so it is reported (one line) and fails the run.
    try {
      await img.close();
    } catch (e) {
      // qcow2 says it in qemu-io's words ("Failed to flush the L2 table cache: ...");
      // a bare strerror text gets the file's name for context.
      const msg = messageOf(e);
      throw new CliError(msg === strerror(e) ? `Failed to close '${path}': ${msg}` : msg, 1, { cause: e });
    }
  }
  return failed ? 1 : 0;
}
