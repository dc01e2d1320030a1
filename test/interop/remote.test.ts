/**
 * Remote images: the interop corpus served by nginx on loopback, read by
 * qimg and by qemu-img's curl driver from the same URLs. info, map and
 * convert -O raw agree; a compressed image's conversion and a random-read
 * trace cost qimg fewer requests and no more bytes (counted in nginx's
 * access log); a local overlay on a remote base works as qemu-img's; and a
 * server that fails mid-way ends in one line, exit 1, and no output file.
 */
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { buildCorpus, makeTempDir, qemuToolsMissing, qimg, removeDir, runAsync, type CorpusImage } from '../helpers/corpus.js';
import { haveNginx, startNginx, type Nginx } from '../helpers/nginx.js';
import { startRangeServer } from '../helpers/range-server.js';

const curlDriver = existsSync('/usr/lib/x86_64-linux-gnu/qemu/block-curl.so') || existsSync('/usr/lib/qemu/block-curl.so');
const missing = qemuToolsMissing() ?? (haveNginx() ? undefined : 'nginx') ?? (curlDriver ? undefined : "qemu's curl driver (qemu-block-extra)");
if (missing && process.env.CI) throw new Error(`${missing} is required when CI is set`);

let dir = '';
let corpus: CorpusImage[] = [];
let nginx: Nginx | undefined;

before(async () => {
  if (missing) return;
  dir = makeTempDir('qimg-remote-');
  corpus = buildCorpus(dir, { huge: false }).filter((c) => !c.name.includes('data_file'));
  nginx = await startNginx(dir);
});

after(async () => {
  await nginx?.stop();
  if (dir) removeDir(dir);
});

const url = (file: string): string => `${nginx!.origin}/${basename(file)}`;
const qemuImg = (args: string[], cwd = dir) => runAsync('qemu-img', args, { cwd, timeout: 120_000 });

/**
 * qemu-img over its curl driver, run again when it stalls: now and then one
 * of its requests waits out curl's timeout (with nginx, with or without
 * kept-alive connections), which says nothing about the image.
 */
async function qemuImgCurl(args: string[], cwd: string): Promise<Awaited<ReturnType<typeof runAsync>>> {
  for (let attempt = 1; ; attempt++) {
    const r = await runAsync('qemu-img', args, { cwd, timeout: 20_000 });
    if (!r.timedOut || attempt === 4) return r;
  }
}

test('every corpus image reads the same through qimg and qemu-img over HTTP: info, map, convert -O raw', async (t) => {
  if (missing) return t.skip(`${missing} not installed`);
  const work = makeTempDir('qimg-remote-out-');
  try {
    for (const img of corpus) {
      const u = url(img.path);
      for (const args of [['info', '--output=json', u], ['info', '--output=json', '--backing-chain', u], ['map', '--output=json', u]]) {
        const ours = await qimg(args, { cwd: work });
        const theirs = await qemuImgCurl(args, work);
        assert.equal(ours.status, theirs.status, `${img.name}: ${args.join(' ')}: ${ours.stderr}`);
        // "actual-size" is what the host allocates: neither tool knows it for a URL.
        assert.equal(ours.stdout, theirs.stdout, `${img.name}: ${args.join(' ')}`);
      }
      const a = join(work, 'a.raw');
      const b = join(work, 'b.raw');
      const ours = await qimg(['convert', '-O', 'raw', u, a], { cwd: work });
      const theirs = await qemuImgCurl(['convert', '-O', 'raw', u, b], work);
      assert.equal(ours.status, 0, `${img.name}: ${ours.stderr}`);
      assert.equal(theirs.status, 0, `${img.name}: ${theirs.stderr}`);
      assert.ok(readFileSync(a).equals(readFileSync(b)), `${img.name}: convert -O raw differs`);
    }
  } finally {
    removeDir(work);
  }
});

function cost(n: Nginx): { requests: number; bytes: number } {
  const log = n.log();
  return { requests: log.length, bytes: log.reduce((s, e) => s + e.bytes, 0) };
}

async function settle(): Promise<void> {
  await new Promise((r) => setTimeout(r, 200)); // nginx logs a request when it ends
}

test('a compressed image: convert -O raw and a random-read trace cost fewer requests and no more bytes than qemu-img', async (t) => {
  if (missing) return t.skip(`${missing} not installed`);
  const work = makeTempDir('qimg-remote-cost-');
  try {
    // 32 MiB of text-like data, compressed: one frame per cluster, packed tight.
    const src = join(work, 'src.raw');
    const words = ['guest', 'kernel', 'module', 'file', 'block', 'inode', 'the', 'a'];
    const buf = Buffer.alloc(32 << 20);
    let x = 7;
    for (let at = 0; at < buf.length; ) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      at += buf.write(words[(x >>> 16) % words.length]! + ' ', at);
    }
    writeFileSync(src, buf);
    assert.equal((await qemuImg(['convert', '-c', '-O', 'qcow2', src, join(dir, 'cost.qcow2')])).status, 0);
    const u = url('cost.qcow2');

    const measure = async (run: () => Promise<{ status: number | null; stderr: string }>): Promise<{ requests: number; bytes: number }> => {
      nginx!.resetLog();
      const r = await run();
      assert.equal(r.status, 0, r.stderr);
      await settle();
      return cost(nginx!);
    };
    const ours = await measure(() => qimg(['convert', '-O', 'raw', u, join(work, 'a.raw')], { cwd: work }));
    const theirs = await measure(() => qemuImg(['convert', '-O', 'raw', u, join(work, 'b.raw')], work));
    assert.ok(readFileSync(join(work, 'a.raw')).equals(readFileSync(join(work, 'b.raw'))));
    t.diagnostic(`convert: qimg ${ours.requests} requests / ${ours.bytes} bytes; qemu-img ${theirs.requests} / ${theirs.bytes}`);
    assert.ok(ours.requests < theirs.requests, `requests: qimg ${ours.requests}, qemu-img ${theirs.requests}`);
    assert.ok(ours.bytes <= theirs.bytes, `bytes: qimg ${ours.bytes}, qemu-img ${theirs.bytes}`);

    // A replayed random-read trace: 200 reads of 4 KiB at pseudo-random offsets, through qemu-io's command language.
    const cmds: string[] = [];
    let y = 99;
    for (let i = 0; i < 200; i++) {
      y = (Math.imul(y, 1103515245) + 12345) >>> 0;
      cmds.push('-c', `read ${(y % ((32 << 20) / 4096)) * 4096} 4k`);
    }
    const ioOurs = await measure(() => qimg(['io', '-r', ...cmds, u], { cwd: work }));
    const ioTheirs = await measure(() => runAsync('qemu-io', ['-r', ...cmds, u], { cwd: work, timeout: 120_000 }));
    t.diagnostic(`trace: qimg ${ioOurs.requests} requests / ${ioOurs.bytes} bytes; qemu-io ${ioTheirs.requests} / ${ioTheirs.bytes}`);
    assert.ok(ioOurs.requests < ioTheirs.requests, `trace requests: qimg ${ioOurs.requests}, qemu-io ${ioTheirs.requests}`);
    assert.ok(ioOurs.bytes <= ioTheirs.bytes, `trace bytes: qimg ${ioOurs.bytes}, qemu-io ${ioTheirs.bytes}`);
  } finally {
    removeDir(work);
  }
});

test('a local overlay on a remote base: writes stay local, check is clean, and it matches the overlay qemu-img makes', async (t) => {
  if (missing) return t.skip(`${missing} not installed`);
  const work = makeTempDir('qimg-remote-overlay-');
  try {
    const base = corpus.find((c) => c.name === 'qcow2 v3 cluster_size=64K')!;
    const u = url(base.path);
    const before = statSync(base.path).mtimeMs;
    const ours = join(work, 'ours.qcow2');
    const theirs = join(work, 'theirs.qcow2');
    assert.equal((await qimg(['create', '-f', 'qcow2', '-b', u, '-F', 'qcow2', ours], { cwd: work })).status, 0);
    assert.equal((await qemuImg(['create', '-f', 'qcow2', '-b', u, '-F', 'qcow2', theirs], work)).status, 0);
    const writes = ['write -P 0x5a 100k 300k', 'write -z 1M 64k', 'discard 2M 64k', 'write -P 0x11 4095k 1k'].flatMap((c) => ['-c', c]);
    const r1 = await qimg(['io', ...writes, ours], { cwd: work });
    assert.equal(r1.status, 0, r1.stderr);
    const r2 = await runAsync('qemu-io', [...writes, theirs], { cwd: work, timeout: 120_000 });
    assert.equal(r2.status, 0, r2.stderr);
    assert.equal(statSync(base.path).mtimeMs, before, 'the remote base is untouched');
    assert.equal((await qemuImg(['check', ours], work)).status, 0);
    const cmp = await qemuImg(['compare', ours, theirs], work);
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    // And read back through qimg: the overlay's writes over the remote base's data.
    const rd = await qimg(['io', '-r', '-c', 'read -P 0x5a 100k 300k', '-c', 'read -P 0x11 4095k 1k', ours], { cwd: work });
    assert.equal(rd.status, 0, rd.stdout + rd.stderr);
  } finally {
    removeDir(work);
  }
});

test('faults: no range support, 500s, a truncated answer, a changed file, a server gone mid-convert: one line, exit 1, no output left', async (t) => {
  if (missing) return t.skip(`${missing} not installed`);
  const work = makeTempDir('qimg-remote-faults-');
  try {
    const image = readFileSync(corpus.find((c) => c.name === 'qcow2 v3 cluster_size=64K')!.path);
    const changed = Buffer.concat([image.subarray(0, 0x10000), Buffer.alloc(image.length - 0x10000, 1)]);
    const out = join(work, 'out.raw');
    type Server = Awaited<ReturnType<typeof startRangeServer>>;
    const cases: Array<[string, (s: Server) => void, RegExp]> = [
      ['200 instead of 206', (s) => (s.faults.ignoreRange = true), /does not support range requests/],
      ['500s until the retries run out', (s) => Object.assign(s.faults, { from: 2, failFirst: 1000 }), /HTTP 500/],
      ['a truncated answer', (s) => Object.assign(s.faults, { from: 2, truncate: true }), /short answer|could not connect|terminated/],
      ['a file that changes', (s) => Object.assign(s.faults, { from: 2, changeTo: changed }), /changed on the server/],
    ];
    for (const [what, fault, message] of cases) {
      const s = await startRangeServer(image, '/disk.qcow2');
      try {
        fault(s);
        const started = Date.now();
        const r = await qimg(['convert', '-O', 'raw', s.url, out], { cwd: work });
        assert.equal(r.status, 1, `${what}: ${r.stderr}`);
        assert.match(r.stderr, message, what);
        assert.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line: ${r.stderr}`);
        assert.equal(existsSync(out), false, `${what}: no output file`);
        assert.ok(Date.now() - started < 30_000, `${what}: bounded time`);
      } finally {
        await s.close();
      }
    }
    // The server goes away after a few requests.
    const s = await startRangeServer(image, '/disk.qcow2');
    s.faults.delayMs = 50;
    const run = qimg(['convert', '-O', 'raw', s.url, out], { cwd: work });
    const until = Date.now() + 10_000;
    while (s.log.length < 3 && Date.now() < until) await new Promise((res) => setTimeout(res, 10));
    await s.close();
    const r = await run;
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.equal(existsSync(out), false);
  } finally {
    removeDir(work);
  }
});
