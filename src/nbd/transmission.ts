/**
 * The transmission phase: requests are read one after another, run
 * concurrently through the Image (at most MAX_IN_FLIGHT per client), and
 * answered as each finishes, in any order, as NBD allows.
 */
import type { Connection } from './connection.js';
import { contextExtents } from './contexts.js';
import { messageOf, nbdErrno, RequestError } from './errors.js';
import type { NbdExport } from './export.js';
import {
  CMD, CMD_FLAG, CMD_NAMES, MAX_BUFFER, MAX_IN_FLIGHT, NBD_ERR, REPLY_FLAG_DONE, REPLY_TYPE, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
} from './protocol.js';

interface Request {
  flags: number;
  type: number;
  handle: Buffer;
  offset: number;
  length: number;
  payload?: Buffer;
}

/** Cheap all-zero test for --detect-zeroes. */
function allZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

const cmdName = (t: number): string => (t < CMD_NAMES.length ? `NBD_CMD_${CMD_NAMES[t]}` : '<unknown>');

/** Serve requests until DISC, EOF or a protocol violation. Returns once in-flight requests are answered. */
export async function transmit(conn: Connection, exp: NbdExport): Promise<void> {
  const inflight = new Set<Promise<void>>();
  try {
    for (;;) {
      while (inflight.size >= MAX_IN_FLIGHT) await Promise.race(inflight);
      let head: Buffer;
      try {
        head = await conn.reader.read(28);
      } catch {
        return;
      }
      if (head.readUInt32BE(0) !== REQUEST_MAGIC) {
        conn.destroy();
        return;
      }
      const offsetBig = head.readBigUInt64BE(16);
      const req: Request = {
        flags: head.readUInt16BE(4),
        type: head.readUInt16BE(6),
        handle: Buffer.from(head.subarray(8, 16)),
        offset: offsetBig > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offsetBig),
        length: head.readUInt32BE(24),
      };
      if (req.type === CMD.DISC) return;
      const tooLong = (req.type === CMD.READ || req.type === CMD.WRITE || req.type === CMD.CACHE) && req.length > MAX_BUFFER;
      if (tooLong) {
        await replyError(conn, req, NBD_ERR.EINVAL, `len (${req.length}) is larger than max len (${MAX_BUFFER})`);
        // The payload of an over-long write cannot be skipped safely: the stream is lost.
        if (req.type === CMD.WRITE) {
          conn.end();
          return;
        }
        continue;
      }
      if (req.type === CMD.WRITE) {
        try {
          req.payload = await conn.reader.read(req.length);
        } catch {
          return;
        }
      }
      const p: Promise<void> = run(conn, exp, req).finally(() => inflight.delete(p));
      inflight.add(p);
    }
  } finally {
    await Promise.allSettled([...inflight]);
  }
}

async function run(conn: Connection, exp: NbdExport, req: Request): Promise<void> {
  try {
    check(conn, exp, req);
    await handle(conn, exp, req);
  } catch (e) {
    await replyError(conn, req, nbdErrno(e), messageOf(e));
  }
}

/** qemu-nbd's request checks, in its order. */
function check(conn: Connection, exp: NbdExport, req: Request): void {
  const writes = req.type === CMD.WRITE || req.type === CMD.WRITE_ZEROES || req.type === CMD.TRIM;
  if (exp.readOnly && writes) throw new RequestError(NBD_ERR.EPERM, 'Export is read-only');
  if (req.offset > exp.size || req.length > exp.size - req.offset) {
    const errno = req.type === CMD.WRITE || req.type === CMD.WRITE_ZEROES ? NBD_ERR.ENOSPC : NBD_ERR.EINVAL;
    throw new RequestError(errno, `operation past EOF; From: ${req.offset}, Len: ${req.length}, Size: ${exp.size}`);
  }
  let valid: number = CMD_FLAG.FUA;
  if (req.type === CMD.READ && conn.structured) valid |= CMD_FLAG.DF;
  else if (req.type === CMD.WRITE_ZEROES) valid |= CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO;
  else if (req.type === CMD.BLOCK_STATUS) valid |= CMD_FLAG.REQ_ONE;
  if (req.flags & ~valid) throw new RequestError(NBD_ERR.EINVAL, `unsupported flags for command ${cmdName(req.type)} (got 0x${req.flags.toString(16)})`);
}

async function handle(conn: Connection, exp: NbdExport, req: Request): Promise<void> {
  const img = exp.image;
  const fua = (req.flags & CMD_FLAG.FUA) !== 0 || (exp.flushEachWrite && req.type !== CMD.READ);
  switch (req.type) {
    case CMD.READ: {
      if (fua) await img.flush();
      if (conn.structured && !(req.flags & CMD_FLAG.DF) && req.length > 0) return sparseRead(conn, exp, req);
      const buf = Buffer.allocUnsafe(req.length);
      await img.read(req.offset, buf);
      if (conn.structured) return sendChunk(conn, req, REPLY_FLAG_DONE, REPLY_TYPE.OFFSET_DATA, [u64(req.offset), buf]);
      return sendSimple(conn, req, 0, buf);
    }
    case CMD.WRITE: {
      const data = req.payload!;
      if (exp.detectZeroes !== 'off' && allZero(data)) await img.writeZeroes(req.offset, data.length, { mayUnmap: exp.detectZeroes === 'unmap' && exp.unmap });
      else await img.write(req.offset, data);
      if (fua) await img.flush();
      return sendOk(conn, req);
    }
    case CMD.WRITE_ZEROES: {
      if (req.flags & CMD_FLAG.FAST_ZERO && !img.driver.writeZeroes) throw new RequestError(NBD_ERR.ENOTSUP, 'Operation not supported');
      await img.writeZeroes(req.offset, req.length, { mayUnmap: exp.unmap && !(req.flags & CMD_FLAG.NO_HOLE) });
      if (fua) await img.flush();
      return sendOk(conn, req);
    }
    case CMD.FLUSH:
      await img.flush();
      return sendOk(conn, req);
    case CMD.TRIM:
      // qemu's discard=ignore (qemu-nbd's default): TRIM succeeds and changes nothing.
      if (exp.unmap) await img.discard(req.offset, req.length);
      if (fua) await img.flush();
      return sendOk(conn, req);
    case CMD.CACHE: {
      // Prefetch: read through the chain so the bytes are warm; nothing to return.
      const buf = Buffer.allocUnsafe(Math.min(req.length, 1 << 20));
      for (let pos = 0; pos < req.length; pos += buf.length) await img.read(req.offset + pos, buf.subarray(0, Math.min(buf.length, req.length - pos)));
      return sendOk(conn, req);
    }
    case CMD.BLOCK_STATUS: {
      if (req.length === 0) throw new RequestError(NBD_ERR.EINVAL, 'need non-zero length');
      if (conn.meta.length === 0) throw new RequestError(NBD_ERR.EINVAL, 'CMD_BLOCK_STATUS not negotiated');
      const one = (req.flags & CMD_FLAG.REQ_ONE) !== 0;
      const chunks: Array<{ id: number; body: Buffer }> = [];
      for (const id of conn.meta) {
        const ext = await contextExtents(exp, id, req.offset, req.length, one);
        const body = Buffer.alloc(4 + ext.length * 8);
        body.writeUInt32BE(id, 0);
        ext.forEach(([len, flags], i) => {
          body.writeUInt32BE(len, 4 + i * 8);
          body.writeUInt32BE(flags >>> 0, 8 + i * 8);
        });
        chunks.push({ id, body });
      }
      const pieces: Uint8Array[] = [];
      chunks.forEach((c, i) => pieces.push(chunkHeader(req, i === chunks.length - 1 ? REPLY_FLAG_DONE : 0, REPLY_TYPE.BLOCK_STATUS, c.body.length), c.body));
      return conn.send(pieces);
    }
    default:
      throw new RequestError(NBD_ERR.EINVAL, `invalid request type (${req.type}) received`);
  }
}

/** Structured READ as qemu-nbd sends it: zero runs as OFFSET_HOLE, the rest as OFFSET_DATA. */
async function sparseRead(conn: Connection, exp: NbdExport, req: Request): Promise<void> {
  const img = exp.image;
  const end = req.offset + req.length;
  const parts: Array<{ offset: number; length: number; zero: boolean }> = [];
  for (let pos = req.offset; pos < end; ) {
    const e = await img.blockStatus(pos, end - pos);
    const n = Math.min(e.length, end - pos);
    if (n <= 0) break;
    const last = parts[parts.length - 1];
    if (last && last.zero === e.zero) last.length += n;
    else parts.push({ offset: pos, length: n, zero: e.zero });
    pos += n;
  }
  const bufs = await Promise.all(
    parts.map(async (p) => {
      if (p.zero) return null;
      const b = Buffer.allocUnsafe(p.length);
      await img.read(p.offset, b);
      return b;
    }),
  );
  const pieces: Uint8Array[] = [];
  parts.forEach((p, i) => {
    const flags = i === parts.length - 1 ? REPLY_FLAG_DONE : 0;
    const data = bufs[i];
    if (data) {
      pieces.push(chunkHeader(req, flags, REPLY_TYPE.OFFSET_DATA, 8 + p.length), u64(p.offset), data);
    } else {
      const body = Buffer.alloc(12);
      body.writeBigUInt64BE(BigInt(p.offset), 0);
      body.writeUInt32BE(p.length, 8);
      pieces.push(chunkHeader(req, flags, REPLY_TYPE.OFFSET_HOLE, 12), body);
    }
  });
  return conn.send(pieces);
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n), 0);
  return b;
}

function chunkHeader(req: Request, flags: number, type: number, length: number): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  req.handle.copy(h, 8);
  h.writeUInt32BE(length, 16);
  return h;
}

function sendChunk(conn: Connection, req: Request, flags: number, type: number, body: Uint8Array[]): Promise<void> {
  const length = body.reduce((n, b) => n + b.length, 0);
  return conn.send([chunkHeader(req, flags, type, length), ...body]);
}

function sendSimple(conn: Connection, req: Request, errno: number, data?: Uint8Array): Promise<void> {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  h.writeUInt32BE(errno, 4);
  req.handle.copy(h, 8);
  return conn.send(data ? [h, data] : [h]);
}

function sendOk(conn: Connection, req: Request): Promise<void> {
  // Structured mode still answers non-read commands with a simple reply (qemu before extended headers).
  return sendSimple(conn, req, 0);
}

function replyError(conn: Connection, req: Request, errno: number, message: string): Promise<void> {
  if (!conn.structured) return sendSimple(conn, req, errno);
  const msg = Buffer.from(message).subarray(0, 4096);
  const body = Buffer.alloc(6 + msg.length);
  body.writeUInt32BE(errno, 0);
  body.writeUInt16BE(msg.length, 4);
  msg.copy(body, 6);
  return sendChunk(conn, req, REPLY_FLAG_DONE, REPLY_TYPE.ERROR, [body]);
}
