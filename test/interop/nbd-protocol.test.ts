/**
 * The NBD server against a raw socket client: every malformed request gets
 * qemu-nbd's error reply (or drops only that client), structured replies
 * carry holes, data and error messages, and other clients keep being served.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImageFile, serveNbd, type Image, type NbdServerHandle, type ServeNbdOptions } from '../../src/node.js';
import { SocketReader } from '../../src/nbd/reader.js';
import { tmpDir } from '../helpers/tools.js';

const IHAVEOPT = 0x49484156454f5054n;
const SIZE = 4 * 1024 * 1024;

/** A minimal NBD client that speaks the wire format directly. */
class RawClient {
  readonly reader: SocketReader;
  private constructor(readonly sock: Socket) {
    this.reader = new SocketReader(sock);
  }

  static async open(port: number): Promise<RawClient> {
    const sock = connect(port, '127.0.0.1');
    sock.on('error', () => {});
    await new Promise<void>((r) => sock.once('connect', () => r()));
    const c = new RawClient(sock);
    const greet = await c.reader.read(18);
    assert.equal(greet.subarray(0, 8).toString(), 'NBDMAGIC');
    assert.equal(greet.readUInt16BE(16), 3);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3);
    sock.write(flags);
    return c;
  }

  option(opt: number, payload: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(payload.length, 12);
    this.sock.write(Buffer.concat([h, payload]));
  }

  /** Option replies up to and including the first ACK or error. */
  async optionReplies(): Promise<Array<{ type: number; data: Buffer }>> {
    const out: Array<{ type: number; data: Buffer }> = [];
    for (;;) {
      const h = await this.reader.read(20);
      const type = h.readUInt32BE(12);
      const data = await this.reader.read(h.readUInt32BE(16));
      out.push({ type, data });
      if (type === 1 || type >= 0x80000000) return out;
    }
  }

  /** Structured replies, meta context, GO on the default export. */
  async negotiate(structured: boolean, contexts: string[] = []): Promise<void> {
    if (structured) {
      this.option(8);
      assert.equal((await this.optionReplies()).at(-1)!.type, 1);
    }
    if (contexts.length > 0) {
      const parts = [u32(0), u32(contexts.length), ...contexts.flatMap((c) => [u32(Buffer.byteLength(c)), Buffer.from(c)])];
      this.option(10, Buffer.concat(parts));
      await this.optionReplies();
    }
    this.option(7, Buffer.concat([u32(0), u16(0)]));
    const r = await this.optionReplies();
    assert.equal(r.at(-1)!.type, 1, `GO failed: ${r.at(-1)!.data.toString()}`);
  }

  request(type: number, flags: number, handle: number, offset: number, length: number, payload?: Buffer): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt(handle), 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.sock.write(payload ? Buffer.concat([h, payload]) : h);
  }

  /** One simple reply: [handle, error], plus `dataLen` bytes when it succeeded. */
  async simple(dataLen = 0): Promise<{ handle: number; error: number; data: Buffer }> {
    const h = await this.reader.read(16);
    assert.equal(h.readUInt32BE(0), 0x67446698);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLen > 0 ? await this.reader.read(dataLen) : Buffer.alloc(0);
    return { handle: Number(h.readBigUInt64BE(8)), error, data };
  }

  /** Structured chunks of one reply, up to the DONE flag (or a simple reply). */
  async chunks(): Promise<Array<{ handle: number; type: number; flags: number; data: Buffer }>> {
    const out: Array<{ handle: number; type: number; flags: number; data: Buffer }> = [];
    for (;;) {
      const magic = (await this.reader.read(4)).readUInt32BE(0);
      if (magic === 0x67446698) {
        const rest = await this.reader.read(12);
        out.push({ handle: Number(rest.readBigUInt64BE(4)), type: -1, flags: 1, data: rest.subarray(0, 4) });
        return out;
      }
      assert.equal(magic, 0x668e33ef);
      const h = await this.reader.read(16);
      const c = { flags: h.readUInt16BE(0), type: h.readUInt16BE(2), handle: Number(h.readBigUInt64BE(4)), data: await this.reader.read(h.readUInt32BE(12)) };
      out.push(c);
      if (c.flags & 1) return out;
    }
  }

  closed(): Promise<void> {
    return new Promise((r) => (this.sock.destroyed ? r() : this.sock.once('close', () => r())));
  }
}

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const u16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};

async function withServer(opts: Partial<ServeNbdOptions> & { writable?: boolean }, run: (port: number, srv: NbdServerHandle, img: Image) => Promise<void>): Promise<void> {
  const dir = tmpDir();
  const path = join(dir, 'disk.raw');
  // 64 KiB of data, then a hole (a sparse file) to the end.
  writeFileSync(path, Buffer.alloc(64 * 1024, 0x42));
  truncateSync(path, SIZE);
  const img = await openImageFile(path, { format: 'raw', writable: opts.writable ?? true });
  const srv = await serveNbd(img, { listen: { port: 0, host: '127.0.0.1' }, shared: 0, ...opts });
  try {
    await run((srv.address as { port: number }).port, srv, img);
  } finally {
    await srv.close();
    await img.close();
  }
}

/** A well-behaved client still reads the first bytes correctly. */
async function stillServes(port: number): Promise<void> {
  const c = await RawClient.open(port);
  await c.negotiate(false);
  c.request(0, 0, 77, 0, 16);
  const r = await c.simple(16);
  assert.equal(r.error, 0);
  assert.deepEqual(r.data, Buffer.alloc(16, 0x42));
  c.request(2, 0, 0, 0, 0);
  await c.closed();
}

test('malformed requests get qemu-nbd errors (simple replies) and the connection goes on', async () => {
  await withServer({}, async (port) => {
    const c = await RawClient.open(port);
    await c.negotiate(false);
    const cases: Array<[string, () => void, number]> = [
      ['read past EOF', () => c.request(0, 0, 1, SIZE - 512, 1024), 22],
      ['write past EOF', () => c.request(1, 0, 2, SIZE, 512, Buffer.alloc(512)), 28],
      ['zeroes past EOF', () => c.request(6, 0, 3, SIZE + 4096, 512), 28],
      ['offset beyond 2^53', () => c.request(0, 0, 4, 2 ** 60, 512), 22],
      ['unknown command', () => c.request(99, 0, 5, 0, 512), 22],
      ['unknown flag on flush', () => c.request(3, 0x20, 6, 0, 0), 22],
      ['DF without structured replies', () => c.request(0, 4, 7, 0, 512), 22],
      ['block status not negotiated', () => c.request(7, 0, 8, 0, 512), 22],
      ['read longer than 32 MiB', () => c.request(0, 0, 9, 0, 33 * 1024 * 1024), 22],
      ['cache longer than 32 MiB', () => c.request(5, 0, 10, 0, 33 * 1024 * 1024), 22],
    ];
    for (const [what, send, errno] of cases) {
      send();
      const r = await c.simple();
      assert.equal(r.error, errno, what);
    }
    // Writes with a FUA flag, zeroes with NO_HOLE, trim, flush, cache: all succeed.
    c.request(1, 1, 20, 4096, 512, Buffer.alloc(512, 0x33));
    c.request(6, 2, 21, 8192, 4096);
    c.request(4, 0, 22, 1 << 20, 65536);
    c.request(3, 0, 23, 0, 0);
    c.request(5, 0, 24, 0, 65536);
    const handles = new Set<number>();
    for (let i = 0; i < 5; i++) {
      const r = await c.simple();
      assert.equal(r.error, 0);
      handles.add(r.handle);
    }
    assert.deepEqual([...handles].sort(), [20, 21, 22, 23, 24]);
    c.request(0, 0, 25, 4096, 512);
    assert.deepEqual((await c.simple(512)).data, Buffer.alloc(512, 0x33));
    c.request(2, 0, 0, 0, 0);
    await c.closed();
  });
});

test('a read-only export refuses writes, zeroes and trims with EPERM', async () => {
  await withServer({ readOnly: true, writable: false }, async (port) => {
    const c = await RawClient.open(port);
    await c.negotiate(true);
    c.request(1, 0, 1, 0, 512, Buffer.alloc(512));
    c.request(6, 0, 2, 0, 512);
    c.request(4, 0, 3, 0, 512);
    for (let i = 0; i < 3; i++) {
      const [chunk] = await c.chunks();
      assert.equal(chunk!.type, 0x8001);
      assert.equal(chunk!.data.readUInt32BE(0), 1);
      assert.equal(chunk!.data.subarray(6).toString(), 'Export is read-only');
    }
    c.request(2, 0, 0, 0, 0);
    await c.closed();
  });
});

test('structured replies: sparse reads as data and hole chunks, DF as one chunk, block status with REQ_ONE', async () => {
  await withServer({}, async (port) => {
    const c = await RawClient.open(port);
    await c.negotiate(true, ['base:allocation']);
    c.request(0, 0, 1, 0, 1 << 20);
    const sparse = await c.chunks();
    assert.ok(sparse.length >= 2, 'data then hole');
    assert.equal(sparse[0]!.type, 1);
    assert.equal(sparse[0]!.data.readBigUInt64BE(0), 0n);
    const holes = sparse.filter((x) => x.type === 2);
    assert.ok(holes.length >= 1);
    const covered = sparse.reduce((n, x) => n + (x.type === 1 ? x.data.length - 8 : x.data.readUInt32BE(8)), 0);
    assert.equal(covered, 1 << 20);
    c.request(0, 4, 2, 0, 1 << 20);
    const df = await c.chunks();
    assert.equal(df.length, 1);
    assert.equal(df[0]!.type, 1);
    assert.equal(df[0]!.data.length, 8 + (1 << 20));
    c.request(7, 8, 3, 0, SIZE);
    const [bs] = await c.chunks();
    assert.equal(bs!.type, 5);
    assert.equal(bs!.data.length, 12, 'one extent with REQ_ONE');
    assert.equal(bs!.data.readUInt32BE(4), 64 * 1024);
    c.request(7, 0, 4, 0, 0);
    const [zero] = await c.chunks();
    assert.equal(zero!.type, 0x8001);
    assert.equal(zero!.data.subarray(6).toString(), 'need non-zero length');
    c.request(2, 0, 0, 0, 0);
    await c.closed();
  });
});

test('handshake misuse gets option errors; bad magic and unknown client flags drop only that client', async () => {
  await withServer({}, async (port) => {
    const c = await RawClient.open(port);
    c.option(99);
    assert.equal((await c.optionReplies())[0]!.type, 0x80000001);
    c.option(3, Buffer.from('x'));
    assert.equal((await c.optionReplies())[0]!.type, 0x80000003);
    c.option(10, Buffer.concat([u32(0), u32(0)]));
    assert.equal((await c.optionReplies())[0]!.type, 0x80000003, 'SET_META_CONTEXT needs structured replies');
    c.option(5);
    assert.equal((await c.optionReplies())[0]!.type, 0x80000002, 'STARTTLS without TLS configured');
    c.option(7, Buffer.concat([u32(4), Buffer.from('nope'), u16(0)]));
    assert.equal((await c.optionReplies())[0]!.type, 0x80000006);
    c.sock.write(Buffer.alloc(16, 0xee));
    await c.closed();

    const bad = connect(port, '127.0.0.1');
    bad.on('error', () => {});
    bad.once('data', () => bad.write(Buffer.from([0, 0, 0, 0xff])));
    await new Promise((r) => bad.once('close', r));
    await stillServes(port);
  });
});

test('garbage, over-long writes, clients killed mid-request and a connection flood leave other clients served', async () => {
  await withServer({ writable: true }, async (port, srv) => {
    // A client negotiating normally, kept open across the abuse.
    const good = await RawClient.open(port);
    await good.negotiate(true);

    const garbage = await RawClient.open(port);
    await garbage.negotiate(false);
    garbage.sock.write(Buffer.alloc(100, 0x5a));
    await garbage.closed();

    const long = await RawClient.open(port);
    await long.negotiate(false);
    long.request(1, 0, 1, 0, 64 * 1024 * 1024);
    assert.equal((await long.simple()).error, 22);
    await long.closed();

    const killed = await RawClient.open(port);
    await killed.negotiate(false);
    killed.request(1, 0, 1, 0, 1 << 20, Buffer.alloc(1000, 1));
    killed.sock.destroy();

    const flood = await Promise.all(Array.from({ length: 60 }, () => new Promise<void>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.on('error', () => resolve());
      s.once('connect', () => {
        s.write(Buffer.alloc(7, 1));
        s.destroy();
        resolve();
      });
    })));
    assert.equal(flood.length, 60);

    good.request(0, 4, 5, 0, 4096);
    const [data] = await good.chunks();
    assert.deepEqual(data!.data.subarray(8), Buffer.alloc(4096, 0x42));
    good.request(2, 0, 0, 0, 0);
    await good.closed();
    await stillServes(port);
    assert.ok(srv.clients <= 1);
  });
});

test('many requests in flight are all answered, each with its own handle', async () => {
  await withServer({ writable: true }, async (port) => {
    const c = await RawClient.open(port);
    await c.negotiate(false);
    const n = 200;
    for (let i = 0; i < n; i++) {
      if (i % 2) c.request(1, i % 4 === 1 ? 1 : 0, 1000 + i, 65536 + i * 4096, 4096, Buffer.alloc(4096, i & 0xff));
      else c.request(0, 0, 1000 + i, i * 512, 512);
    }
    const seen = new Set<number>();
    for (let i = 0; i < n; i++) {
      const h = await c.reader.read(16);
      const handle = Number(h.readBigUInt64BE(8));
      assert.equal(h.readUInt32BE(4), 0);
      if ((handle - 1000) % 2 === 0) await c.reader.read(512);
      seen.add(handle);
    }
    assert.equal(seen.size, n);
    for (let i = 1; i < n; i += 2) {
      c.request(0, 0, 5000 + i, 65536 + i * 4096, 4096);
      const r = await c.simple(4096);
      assert.deepEqual(r.data, Buffer.alloc(4096, i & 0xff));
    }
    c.request(2, 0, 0, 0, 0);
    await c.closed();
  });
});

test('a server with -e 1 keeps a second client waiting until the first leaves; without persistent it closes after the last', async () => {
  await withServer({ shared: 1, persistent: false }, async (port, srv) => {
    const first = await RawClient.open(port);
    await first.negotiate(false);
    const second = connect(port, '127.0.0.1');
    second.on('error', () => {});
    let greeted = false;
    second.once('data', () => (greeted = true));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(greeted, false, 'the second client waits');
    first.request(2, 0, 0, 0, 0);
    await first.closed();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(greeted, true, 'then it is served');
    second.destroy();
    await srv.closed;
  });
});
