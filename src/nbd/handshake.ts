/**
 * The fixed newstyle handshake as qemu-nbd runs it: greeting, client flags,
 * then options until GO or EXPORT_NAME picks an export (or the client
 * aborts). Returns the export to serve, or null when the client is done.
 */
import type { Duplex } from 'node:stream';
import type { Connection } from './connection.js';
import { contextName, selectContexts } from './contexts.js';
import { transmissionFlags, type NbdExport } from './export.js';
import {
  FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO, MAX_BUFFER, MAX_OPTION, MAX_STRING, NBDMAGIC, OPT, OPT_REPLY_MAGIC, REP,
} from './protocol.js';
import { ConnectionClosed } from './reader.js';

/** Turns the plain socket into a TLS one after STARTTLS was acknowledged. */
export interface TlsUpgrade {
  upgrade(socket: Duplex): Promise<Duplex>;
}

export interface HandshakeSetup {
  readonly exports: readonly NbdExport[];
  /** TLS is offered, and required before any other option (qemu-nbd --tls-creds). */
  readonly tls: TlsUpgrade | undefined;
}

/** A protocol violation the server answers by dropping the client. */
export class Drop extends Error {}

const OPT_NAMES: Record<number, string> = {
  1: 'NBD_OPT_EXPORT_NAME', 2: 'NBD_OPT_ABORT', 3: 'NBD_OPT_LIST', 4: 'NBD_OPT_PEEK_EXPORT', 5: 'NBD_OPT_STARTTLS', 6: 'NBD_OPT_INFO',
  7: 'NBD_OPT_GO', 8: 'NBD_OPT_STRUCTURED_REPLY', 9: 'NBD_OPT_LIST_META_CONTEXT', 10: 'NBD_OPT_SET_META_CONTEXT', 11: 'NBD_OPT_EXTENDED_HEADERS',
};
const optName = (o: number): string => OPT_NAMES[o] ?? 'unknown';

export async function handshake(conn: Connection, setup: HandshakeSetup): Promise<NbdExport | null> {
  const greet = Buffer.alloc(18);
  greet.writeBigUInt64BE(NBDMAGIC, 0);
  greet.writeBigUInt64BE(IHAVEOPT, 8);
  greet.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  await conn.send([greet]);
  const clientFlags = (await conn.reader.read(4)).readUInt32BE(0);
  if (clientFlags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) throw new Drop('Unknown client flags');
  const fixed = (clientFlags & FLAG_FIXED_NEWSTYLE) !== 0;
  conn.noZeroes = (clientFlags & FLAG_NO_ZEROES) !== 0;

  for (;;) {
    const head = await conn.reader.read(16);
    if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new Drop('Bad magic received');
    const opt = head.readUInt32BE(8);
    const len = head.readUInt32BE(12);
    if (len > MAX_OPTION) throw new Drop(`len (${len}) is larger than max len (${MAX_OPTION})`);
    const data = await conn.reader.read(len);
    const reply = (type: number, payload: Uint8Array = new Uint8Array(0)): Promise<void> => sendOptReply(conn, opt, type, payload);
    const error = (type: number, message: string): Promise<void> => reply(type, Buffer.from(message));

    if (setup.tls && !conn.tls) {
      if (opt === OPT.STARTTLS) {
        if (len !== 0) {
          await error(REP.ERR_INVALID, 'Invalid length');
          continue;
        }
        await reply(REP.ACK);
        conn.replace(await setup.tls.upgrade(conn.socket));
        conn.tls = true;
        continue;
      }
      if (opt === OPT.EXPORT_NAME) throw new Drop('Option 0x1 not permitted before TLS');
      if (opt === OPT.ABORT) {
        await reply(REP.ACK);
        return null;
      }
      await error(REP.ERR_TLS_REQD, `Option 0x${opt.toString(16)} not permitted before TLS`);
      continue;
    }
    if (!fixed && opt !== OPT.EXPORT_NAME) throw new Drop(`Unsupported option 0x${opt.toString(16)}`);

    switch (opt) {
      case OPT.EXPORT_NAME: {
        const name = data.toString('utf8');
        const exp = setup.exports.find((e) => e.name === name);
        if (!exp) throw new Drop(`export '${name}' not present`);
        const r = Buffer.alloc(conn.noZeroes ? 10 : 134);
        r.writeBigUInt64BE(BigInt(exp.size), 0);
        r.writeUInt16BE(transmissionFlags(exp, conn.structured), 8);
        await conn.send([r]);
        return exp;
      }
      case OPT.ABORT:
        await reply(REP.ACK);
        return null;
      case OPT.LIST:
        if (len !== 0) {
          await error(REP.ERR_INVALID, `request option '${optName(opt)}' with invalid length`);
          break;
        }
        for (const e of setup.exports) {
          const name = Buffer.from(e.name);
          const desc = Buffer.from(e.description ?? '');
          const p = Buffer.alloc(4 + name.length + desc.length);
          p.writeUInt32BE(name.length, 0);
          name.copy(p, 4);
          desc.copy(p, 4 + name.length);
          await reply(REP.SERVER, p);
        }
        await reply(REP.ACK);
        break;
      case OPT.STARTTLS:
        if (len !== 0) await error(REP.ERR_INVALID, 'Invalid length');
        else if (conn.tls) await error(REP.ERR_INVALID, 'TLS already enabled');
        else await error(REP.ERR_POLICY, 'TLS not configured');
        break;
      case OPT.INFO:
      case OPT.GO: {
        const exp = await infoOrGo(conn, setup, opt, data, reply, error);
        if (exp && opt === OPT.GO) return exp;
        break;
      }
      case OPT.STRUCTURED_REPLY:
        if (len !== 0) await error(REP.ERR_INVALID, `request option '${optName(opt)}' with invalid length`);
        else if (conn.structured) await error(REP.ERR_INVALID, 'structured reply already negotiated');
        else {
          await reply(REP.ACK);
          conn.structured = true;
        }
        break;
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT:
        await metaContext(conn, setup, opt, data, reply, error);
        break;
      default:
        await error(REP.ERR_UNSUP, `Unsupported option ${opt} (${optName(opt)})`);
    }
  }
}

export async function sendOptReply(conn: Connection, opt: number, type: number, payload: Uint8Array): Promise<void> {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(type, 12);
  h.writeUInt32BE(payload.length, 16);
  await conn.send([h, payload]);
}

type Reply = (type: number, payload?: Uint8Array) => Promise<void>;
type ErrorReply = (type: number, message: string) => Promise<void>;

/** INFO and GO: the export's infos, then ACK (GO then enters transmission). */
async function infoOrGo(conn: Connection, setup: HandshakeSetup, opt: number, data: Buffer, reply: Reply, error: ErrorReply): Promise<NbdExport | null> {
  if (data.length < 6) {
    await error(REP.ERR_INVALID, `request option '${optName(opt)}' with invalid length`);
    return null;
  }
  const nameLen = data.readUInt32BE(0);
  if (nameLen > MAX_STRING || nameLen > data.length - 6) {
    await error(REP.ERR_INVALID, 'name length is incorrect');
    return null;
  }
  const name = data.subarray(4, 4 + nameLen).toString('utf8');
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + count * 2) {
    await error(REP.ERR_INVALID, 'request data has incorrect length');
    return null;
  }
  let wantName = false;
  let wantBlockSize = false;
  for (let i = 0; i < count; i++) {
    const r = data.readUInt16BE(6 + nameLen + i * 2);
    if (r === INFO.NAME) wantName = true;
    else if (r === INFO.BLOCK_SIZE) wantBlockSize = true;
  }
  const exp = setup.exports.find((e) => e.name === name);
  if (!exp) {
    await error(REP.ERR_UNKNOWN, `export '${name}' not present`);
    return null;
  }
  if (wantName) await reply(REP.INFO, infoPayload(INFO.NAME, Buffer.from(exp.name)));
  if (exp.description !== undefined) await reply(REP.INFO, infoPayload(INFO.DESCRIPTION, Buffer.from(exp.description)));
  const min = wantBlockSize || opt === OPT.INFO ? exp.alignment : 1;
  const sizes = Buffer.alloc(12);
  sizes.writeUInt32BE(min, 0);
  sizes.writeUInt32BE(Math.max(4096, min), 4);
  sizes.writeUInt32BE(MAX_BUFFER, 8);
  await reply(REP.INFO, infoPayload(INFO.BLOCK_SIZE, sizes));
  const ex = Buffer.alloc(10);
  ex.writeBigUInt64BE(BigInt(exp.size), 0);
  ex.writeUInt16BE(transmissionFlags(exp, conn.structured), 8);
  await reply(REP.INFO, infoPayload(INFO.EXPORT, ex));
  if (opt === OPT.INFO && !wantBlockSize && exp.alignment > 1) {
    await error(REP.ERR_BLOCK_SIZE_REQD, 'request NBD_INFO_BLOCK_SIZE to use this export');
    return null;
  }
  await reply(REP.ACK);
  return exp;
}

function infoPayload(type: number, body: Uint8Array): Buffer {
  const p = Buffer.alloc(2 + body.length);
  p.writeUInt16BE(type, 0);
  p.set(body, 2);
  return p;
}

/** LIST_META_CONTEXT / SET_META_CONTEXT: parse the queries, reply the matching contexts. */
async function metaContext(conn: Connection, setup: HandshakeSetup, opt: number, data: Buffer, reply: Reply, error: ErrorReply): Promise<void> {
  if (opt === OPT.SET_META_CONTEXT && !conn.structured) {
    await error(REP.ERR_INVALID, `request option '${optName(opt)}' when structured reply is not negotiated`);
    return;
  }
  const bad = (): Promise<void> => error(REP.ERR_INVALID, `request option '${optName(opt)}' with invalid length`);
  if (data.length < 8) return bad();
  const nameLen = data.readUInt32BE(0);
  if (nameLen > MAX_STRING || nameLen > data.length - 8) return bad();
  const name = data.subarray(4, 4 + nameLen).toString('utf8');
  const count = data.readUInt32BE(4 + nameLen);
  let pos = 8 + nameLen;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (pos + 4 > data.length) return bad();
    const qLen = data.readUInt32BE(pos);
    pos += 4;
    if (qLen > data.length - pos) return bad();
    // Over-long queries are skipped, as qemu-nbd skips them.
    if (qLen <= MAX_STRING) queries.push(data.subarray(pos, pos + qLen).toString('utf8'));
    pos += qLen;
  }
  if (pos !== data.length) return bad();
  const exp = setup.exports.find((e) => e.name === name);
  if (!exp) {
    await error(REP.ERR_UNKNOWN, `export '${name}' not present`);
    return;
  }
  const selected = selectContexts(exp, queries, opt === OPT.LIST_META_CONTEXT);
  for (const id of selected) {
    const n = Buffer.from(contextName(exp, id));
    const p = Buffer.alloc(4 + n.length);
    p.writeUInt32BE(id, 0);
    n.copy(p, 4);
    await reply(REP.META_CONTEXT, p);
  }
  if (opt === OPT.SET_META_CONTEXT) conn.meta = selected;
  await reply(REP.ACK);
}

export { ConnectionClosed };
