/**
 * serveNbd against real clients: nbdinfo's view (flags, block sizes,
 * contexts, maps) matches the same image served by qemu-nbd; qemu-img,
 * qemu-io and nbdcopy read and write through it over TCP and Unix sockets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openImageFile, serveNbd, type Image, type NbdServerHandle, type ServeNbdOptions } from '../../src/node.js';
import { qemuImg, qemuIo, tmpDir } from '../helpers/tools.js';
import { requireNbdTools, runAsync, startQemuNbd, unixUri } from '../helpers/nbd.js';

/** Serve `path` in this process; the callback gets the server; everything is closed after. */
async function withServer(path: string, opts: Partial<ServeNbdOptions> & { writable?: boolean }, run: (srv: NbdServerHandle, img: Image) => Promise<void>): Promise<void> {
  const img = await openImageFile(path, { writable: opts.writable ?? false });
  const srv = await serveNbd(img, { listen: { port: 0, host: '127.0.0.1' }, ...opts });
  try {
    await run(srv, img);
  } finally {
    await srv.close();
    await img.close();
  }
}

const tcpUri = (srv: NbdServerHandle, name = ''): string => `nbd://127.0.0.1:${(srv.address as { port: number }).port}/${name}`;
/** nbdinfo output without the line naming the URI (it differs between the two servers). */
const noUri = (s: string): string => s.replace(/^\turi: .*\n/m, '');

/** A qcow2 image over a backing file: data in both layers, zero clusters, holes. */
function layeredImage(dir: string): string {
  const base = join(dir, 'base.qcow2');
  const top = join(dir, 'top.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', base, '16M']);
  qemuIo(['-c', 'write -P 0xa1 0 2M', '-c', 'write -P 0xa2 8M 1M', base]);
  qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
  qemuIo(['-c', 'write -P 0xb1 1M 512k', '-c', 'write -z 8M 256k', '-c', 'write -P 0xb2 12M 64k', top]);
  return top;
}

test('nbdinfo shows what it shows for qemu-nbd: flags, block sizes, contexts, maps (multi-conn, allocation depth)', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const top = layeredImage(dir);
  const views = async (uri: string): Promise<string[]> => [
    noUri((await runAsync('nbdinfo', [uri])).stdout),
    (await runAsync('nbdinfo', ['--map', uri])).stdout,
    (await runAsync('nbdinfo', ['--map=qemu:allocation-depth', uri])).stdout,
    (await runAsync('nbdinfo', ['--map', '--totals', uri])).stdout,
  ];
  const sock = join(dir, 'q.sock');
  const q = await startQemuNbd(['-f', 'qcow2', '-r', '-A', '-e', '0', '-t', top], sock);
  const expected = await views(unixUri(sock));
  await q.stop();
  assert.match(expected[0]!, /can_multi_conn: true/);
  assert.match(expected[2]!, /2\s+backing depth 2/);
  await withServer(top, { readOnly: true, allocationDepth: true, shared: 0 }, async (srv) => {
    const got = await views(tcpUri(srv));
    assert.deepEqual(got, expected);
  });
});

test('a writable export advertises what qemu-nbd advertises (trim, zero, fast zero, no multi-conn with -e 1)', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'w.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '8M']);
  const sock = join(dir, 'q.sock');
  const q = await startQemuNbd(['-f', 'qcow2', '-t', img], sock);
  const expected = noUri((await runAsync('nbdinfo', [unixUri(sock)])).stdout);
  await q.stop();
  assert.match(expected, /can_trim: true/);
  assert.match(expected, /can_multi_conn: false/);
  await withServer(img, { writable: true }, async (srv) => {
    assert.equal(noUri((await runAsync('nbdinfo', [tcpUri(srv)])).stdout), expected);
  });
});

test('nbdinfo --list with an export name and description matches qemu-nbd', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'l.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']);
  const sock = join(dir, 'q.sock');
  const q = await startQemuNbd(['-f', 'qcow2', '-r', '-t', '-x', 'disk0', '-D', 'the first disk', img], sock);
  const expected = (await runAsync('nbdinfo', ['--list', unixUri(sock)])).stdout;
  await q.stop();
  assert.match(expected, /description: the first disk/);
  await withServer(img, { exportName: 'disk0', description: 'the first disk' }, async (srv) => {
    const got = (await runAsync('nbdinfo', ['--list', tcpUri(srv)])).stdout;
    assert.equal(got.replace(/^\turi: .*\n/gm, ''), expected.replace(/^\turi: .*\n/gm, ''));
    const missing = await runAsync('nbdinfo', [tcpUri(srv, 'nope')]);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /No such file or directory for export: nope/);
  });
});

test('nbdinfo --map=qemu:dirty-bitmap:NAME shows the persistent bitmap as qemu-nbd does', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'b.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '8M']);
  qemuImg(['bitmap', '--add', img, 'b0']);
  qemuIo(['-c', 'write -P 1 64k 64k', '-c', 'write -P 2 3M 200k', img]);
  qemuImg(['bitmap', '--disable', img, 'b0']);
  const uriArgs = ['--map=qemu:dirty-bitmap:b0'];
  const sock = join(dir, 'q.sock');
  const q = await startQemuNbd(['-f', 'qcow2', '-r', '-t', '-B', 'b0', img], sock);
  const expected = (await runAsync('nbdinfo', [...uriArgs, unixUri(sock)])).stdout;
  const expectedInfo = noUri((await runAsync('nbdinfo', [unixUri(sock)])).stdout);
  await q.stop();
  assert.match(expected, /dirty/);
  await withServer(img, { bitmaps: ['b0'] }, async (srv) => {
    assert.equal((await runAsync('nbdinfo', [...uriArgs, tcpUri(srv)])).stdout, expected);
    assert.equal(noUri((await runAsync('nbdinfo', [tcpUri(srv)])).stdout), expectedInfo);
  });
  // An enabled bitmap on a writable export is live: writes through the server show at once.
  const live = join(dir, 'live.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', live, '8M']);
  qemuImg(['bitmap', '--add', live, 'b1']);
  await withServer(live, { writable: true, bitmaps: ['b1'], shared: 0 }, async (srv) => {
    assert.equal((await runAsync('qemu-io', ['-f', 'raw', '-c', 'write 2M 64k', tcpUri(srv)])).status, 0);
    assert.equal((await runAsync('nbdinfo', ['--map=qemu:dirty-bitmap:b1', tcpUri(srv)])).stdout, `         0     2097152    0  clean
   2097152       65536    1  dirty
   2162688     6225920    0  clean
`);
  });
  const img2 = await openImageFile(img);
  await assert.rejects(serveNbd(img2, { listen: { port: 0, host: '127.0.0.1' }, bitmaps: ['nope'] }), /Bitmap 'nope' is not found/);
  await img2.close();
});

test('qemu-img and qemu-io read and write through nbd:// and nbd+unix://', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const top = layeredImage(dir);
  const copy = join(dir, 'copy.qcow2');
  qemuImg(['convert', '-O', 'qcow2', top, copy]);
  const sock = join(dir, 's.sock');
  const img = await openImageFile(copy, { writable: true });
  const srv = await serveNbd(img, { listen: { path: sock }, shared: 0, discard: 'unmap' });
  try {
    const uri = unixUri(sock);
    const info = await runAsync('qemu-img', ['info', '--output=json', uri]);
    assert.equal(JSON.parse(info.stdout)['virtual-size'], 16 * 1024 * 1024);
    assert.equal((await runAsync('qemu-img', ['compare', top, uri])).stdout, 'Images are identical.\n');
    const w = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 100k 300k', '-c', 'write -z 12M 64k', '-c', 'discard 8M 1M', '-c', 'flush', '-c', 'read -P 0x5c 100k 300k', uri]);
    assert.equal(w.status, 0, w.stderr);
    assert.doesNotMatch(w.stdout, /failed|error/i);
    const out = join(dir, 'out.qcow2');
    assert.equal((await runAsync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', uri, out])).status, 0);
    // The model: the same writes on a local copy of the original.
    const model = join(dir, 'model.qcow2');
    qemuImg(['convert', '-O', 'qcow2', top, model]);
    qemuIo(['-c', 'write -P 0x5c 100k 300k', '-c', 'write -z 12M 64k', '-c', 'write -z 8M 1M', model]);
    assert.equal((await runAsync('qemu-img', ['compare', model, out])).stdout, 'Images are identical.\n');
  } finally {
    await srv.close();
    await img.close();
  }
  const check = qemuImg(['check', copy]);
  assert.equal(check.status, 0, check.stdout + check.stderr);
});

test('nbdcopy with 4 connections copies out of and into the export', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const src = join(dir, 'src.raw');
  qemuImg(['create', '-q', '-f', 'raw', src, '24M']);
  qemuIo(['-f', 'raw', '-c', 'write -P 0x17 0 5M', '-c', 'write -P 0x28 9M 3M', '-c', 'write -P 0x39 23M 1M', src]);
  const target = join(dir, 't.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', target, '24M']);
  await withServer(target, { writable: true, shared: 0 }, async (srv) => {
    const into = await runAsync('nbdcopy', ['-C', '4', '--flush', src, tcpUri(srv)]);
    assert.equal(into.status, 0, into.stderr);
    const back = join(dir, 'back.raw');
    const out = await runAsync('nbdcopy', ['-C', '4', tcpUri(srv), back]);
    assert.equal(out.status, 0, out.stderr);
    assert.equal(qemuImg(['compare', '-f', 'raw', '-F', 'raw', src, back]).stdout, 'Images are identical.\n');
  });
  assert.equal(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', src, target]).stdout, 'Images are identical.\n');
  assert.equal(qemuImg(['check', target]).status, 0);
});

test('several clients writing disjoint regions at once leave the image as the model', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const target = join(dir, 'c.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', target, '32M']);
  const model = join(dir, 'm.raw');
  qemuImg(['create', '-q', '-f', 'raw', model, '32M']);
  const clients = 6;
  const cmds = (i: number): string[] => {
    const base = i * 5 * 1024 * 1024;
    const out: string[] = [];
    for (let k = 0; k < 8; k++) out.push('-c', `write -P ${0x20 + i * 8 + k} ${base + k * 600 * 1024} ${300 * 1024 + k * 4096}`);
    out.push('-c', `write -z ${base + 100 * 1024} 64k`);
    return out;
  };
  await withServer(target, { writable: true, shared: 0 }, async (srv) => {
    const runs = await Promise.all(Array.from({ length: clients }, (_, i) => runAsync('qemu-io', ['-f', 'raw', ...cmds(i), tcpUri(srv)])));
    for (const r of runs) assert.equal(r.status, 0, r.stderr);
  });
  for (let i = 0; i < clients; i++) qemuIo(['-f', 'raw', ...cmds(i), model]);
  assert.equal(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', model, target]).stdout, 'Images are identical.\n');
  assert.equal(qemuImg(['check', target]).status, 0);
});
