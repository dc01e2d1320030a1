/** write, writev and aio_write: pattern, file or zero writes, compressed or plain. */
import { readFileSync } from 'node:fs';
import type { Image } from '../../node.js';
import { err, out, strerror } from '../common.js';
import { cmdGetopt, image, usage, type Command } from './command.js';
import { errnoText } from './errno.js';
import { cvtnum, cvtnumErr, MAX_REQUEST, parsePattern, vectorLength } from './numbers.js';
import { outOfRange } from './read.js';
import { report, since } from './report.js';

interface WriteRequest {
  offset: number;
  count: number;
  zero: boolean;
  compressed: boolean;
  mayUnmap: boolean;
  vmstate: boolean;
  data?: Uint8Array;
}

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

type Parsed = { req: WriteRequest; quiet: boolean; parsable: boolean; ret?: never } | { ret: number };

/** write's options and checks, in the order qemu-io's write_f makes them. */
function parseWrite(ct: Command, argv: string[]): Parsed {
  const p = cmdGetopt(argv, 'bcCfnpP:qs:uz');
  if (!p) {
    usage(ct);
    return { ret: -22 };
  }
  const f = new Set(p.opts.map(([c]) => c));
  let pattern = 0xcd;
  let fileName = '';
  for (const [c, v] of p.opts) {
    if (c === 'P') {
      pattern = parsePattern(v!);
      if (pattern < 0) return { ret: -22 };
    } else if (c === 's') fileName = v!;
  }
  if (p.operands.length !== 2) {
    usage(ct);
    return { ret: -22 };
  }
  const [bflag, cflag, zflag] = [f.has('b'), f.has('c'), f.has('z')];
  if (bflag && zflag) return fail('-b and -z cannot be specified at the same time');
  if (f.has('f') && (bflag || cflag)) return fail('-f and -b or -c cannot be specified at the same time');
  if (f.has('n') && !zflag) return fail('-n requires -z to be specified');
  if (f.has('u') && !zflag) return fail('-u requires -z to be specified');
  if (Number(zflag) + Number(f.has('P')) + Number(f.has('s')) > 1) return fail('Only one of -z, -P, and -s can be specified at the same time');
  const [offArg, countArg] = p.operands as [string, string];
  const offset = cvtnum(offArg);
  if (offset < 0) {
    cvtnumErr(offset, offArg);
    return { ret: offset };
  }
  const count = cvtnum(countArg);
  if (count < 0) {
    cvtnumErr(count, countArg);
    return { ret: count };
  }
  if (count > MAX_REQUEST && !f.has('n')) return fail(`length cannot exceed ${MAX_REQUEST} without -n, given ${countArg}`);
  if (bflag || cflag) {
    if (offset % 512 !== 0) return fail(`${offset} is not a sector-aligned value for 'offset'`);
    if (count % 512 !== 0) return fail(`${count} is not a sector-aligned value for 'count'`);
  }
  let data: Uint8Array | undefined;
  if (!zflag) {
    data = f.has('s') ? patternFromFile(fileName, count) : new Uint8Array(count).fill(pattern);
    if (!data) return { ret: -22 };
  }
  const req = { offset, count, zero: zflag, compressed: cflag && !zflag, mayUnmap: f.has('u'), vmstate: bflag, data };
  return { req, quiet: f.has('q'), parsable: f.has('C') };
}

function fail(line: string): { ret: number } {
  out(line + '\n');
  return { ret: -22 };
}

/** The failure text of a write, or undefined once it is done. */
async function doWrite(img: Image, r: WriteRequest): Promise<string | undefined> {
  // qimg keeps no VM state area: refused as by qemu's formats without one.
  if (r.vmstate) return 'Operation not supported';
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

/** Run a parsed request and print its report; aio commands count as done once submitted. */
async function perform(img: Image, name: string, parsed: Parsed, aio: boolean): Promise<number> {
  if (parsed.ret !== undefined) return parsed.ret;
  const { req, quiet, parsable } = parsed;
  const t1 = performance.now();
  const failure = await doWrite(img, req);
  const seconds = since(t1);
  if (failure !== undefined) {
    out(`${name} failed: ${failure}\n`);
    return aio ? 0 : -5;
  }
  if (!quiet) out(report('wrote', seconds, req.offset, req.count, req.count, 1, parsable));
  return 0;
}

export const writeCmd: Command = {
  name: 'write',
  altname: 'w',
  argmin: 2,
  argmax: -1,
  args: '[-bcCfnquz] [-P pattern | -s source_file] off len',
  oneline: 'writes a number of bytes at a specified offset',
  writes: true,
  run: (s, argv) => perform(image(s), 'write', parseWrite(writeCmd, argv), false),
};

/** writev and aio_write: one request from several buffers (`off len [len..]`). */
function parseVectored(ct: Command, argv: string[], aio: boolean): Parsed | 'invalid' {
  const p = cmdGetopt(argv, aio ? 'CfiqP:uz' : 'CfqP:');
  if (!p) {
    usage(ct);
    return { ret: -22 };
  }
  const f = new Set(p.opts.map(([c]) => c));
  let pattern = 0xcd;
  for (const [c, v] of p.opts) {
    if (c === 'P') {
      pattern = parsePattern(v!);
      if (pattern < 0) return { ret: -22 };
    }
  }
  if (f.has('i')) return 'invalid';
  if (p.operands.length < 2) {
    usage(ct);
    return { ret: -22 };
  }
  const zflag = f.has('z');
  if (zflag && p.operands.length !== 2) return fail('-z supports only a single length parameter');
  if (f.has('u') && !zflag) return fail('-u requires -z to be specified');
  const offArg = p.operands[0]!;
  const offset = cvtnum(offArg);
  if (offset < 0) {
    cvtnumErr(offset, offArg);
    return { ret: offset };
  }
  let count: number;
  if (zflag) {
    count = cvtnum(p.operands[1]!);
    if (count < 0) {
      cvtnumErr(count, p.operands[1]!);
      return { ret: count };
    }
  } else {
    count = vectorLength(p.operands.slice(1));
    if (count < 0) return { ret: count };
  }
  const data = zflag ? undefined : new Uint8Array(count).fill(pattern);
  const req = { offset, count, zero: zflag, compressed: false, mayUnmap: f.has('u'), vmstate: false, data };
  return { req, quiet: f.has('q'), parsable: f.has('C') };
}

function vectoredWrite(name: string, aio: boolean): Command {
  const ct: Command = {
    name,
    argmin: 2,
    argmax: -1,
    args: aio ? '[-Cfiquz] [-P pattern] off len [len..]' : '[-Cfq] [-P pattern] off len [len..]',
    oneline: aio ? 'asynchronously writes a number of bytes' : 'writes a number of bytes at a specified offset',
    writes: true,
    async run(s, argv) {
      const parsed = parseVectored(ct, argv, aio);
      if (parsed === 'invalid') {
        out('injecting invalid write request\n');
        return 0;
      }
      return perform(image(s), aio ? 'aio_write' : 'writev', parsed, aio);
    },
  };
  return ct;
}

export const writevCmd = vectoredWrite('writev', false);
export const aioWriteCmd = vectoredWrite('aio_write', true);
