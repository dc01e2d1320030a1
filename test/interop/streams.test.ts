/**
 * Image streams against qemu-img on images it made: the byte streams
 * (web and Node) give the bytes of qemu-img's raw conversion; the extent
 * stream's chunks each lie inside one `qemu-img map` entry and agree with
 * its zero flag; a raw file piped through imageNodeWritable into a fresh
 * qcow2 is identical for `qemu-img compare`, clean for `qemu-img check`,
 * and allocates no cluster that is all zero; a past-end write and an abort
 * reject with their ImageError codes and leave a clean image.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream, createWriteStream, readFileSync, writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import type { Image } from '../../src/block/image.js';
import { isImageError } from '../../src/errors.js';
import { imageNodeReadable, imageNodeWritable } from '../../src/io/node-streams.js';
import { openImageFile } from '../../src/node.js';
import { imageExtentStream, imageReadableStream } from '../../src/ops/streams.js';
import { qemuImg, qemuIo, requireTools, tmpDir } from '../helpers/tools.js';

const K = 1024;
const M = 1024 * K;

interface MapEntry {
  start: number;
  length: number;
  zero: boolean;
  data: boolean;
}

function ok(r: { status: number; stderr: string }, what: string): void {
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
}

const img = (dir: string, ...args: string[]): void => ok(qemuImg(args, { cwd: dir }), `qemu-img ${args.join(' ')}`);
const io = (dir: string, file: string, ...cmds: string[]): void => ok(qemuIo(['-f', file.endsWith('.raw') ? 'raw' : file.endsWith('.qed') ? 'qed' : 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file], { cwd: dir }), cmds.join('; '));

function qemuMap(dir: string, file: string): MapEntry[] {
  const r = qemuImg(['map', '--output=json', file], { cwd: dir });
  ok(r, 'qemu-img map');
  return JSON.parse(r.stdout) as MapEntry[];
}

/** qemu-img's raw conversion of `file`: the expected guest bytes. */
function qemuRaw(dir: string, file: string): Uint8Array {
  img(dir, 'convert', '-O', 'raw', file, 'expected.raw');
  return new Uint8Array(readFileSync(join(dir, 'expected.raw')));
}

interface Kind {
  name: string;
  file: string;
  make(dir: string): void;
}

const kinds: Kind[] = [
  {
    name: 'raw with holes',
    file: 'disk.raw',
    make(dir) {
      img(dir, 'create', '-f', 'raw', 'disk.raw', '5M');
      io(dir, 'disk.raw', 'write -P 0x11 0 300k', 'write -P 0x22 2M 1M', 'write -z 2500k 64k', 'write -P 0x33 4700k 17k');
    },
  },
  {
    name: 'qcow2 over raw',
    file: 'top.qcow2',
    make(dir) {
      img(dir, 'create', '-f', 'raw', 'base.raw', '6M');
      io(dir, 'base.raw', 'write -P 0x41 0 3M');
      img(dir, 'create', '-f', 'qcow2', '-o', 'cluster_size=65536', '-b', 'base.raw', '-F', 'raw', 'top.qcow2', '6M');
      io(dir, 'top.qcow2', 'write -P 0x52 100k 200k', 'write -z 1M 256k', 'discard 2M 128k', 'write -c -P 0x63 4M 64k', 'write -P 0x74 5M 100k');
    },
  },
  {
    name: 'QED over qcow2',
    file: 'top.qed',
    make(dir) {
      img(dir, 'create', '-f', 'qcow2', 'base.qcow2', '4M');
      io(dir, 'base.qcow2', 'write -P 0x15 512k 1M', 'write -z 3M 64k');
      img(dir, 'create', '-f', 'qed', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qed', '5M');
      io(dir, 'top.qed', 'write -P 0x26 0 64k', 'write -P 0x37 1M 300k', 'write -z 1200k 64k');
    },
  },
];

async function withImage<T>(path: string, f: (image: Image) => Promise<T>, writable = false): Promise<T> {
  const image = await openImageFile(path, { writable });
  try {
    return await f(image);
  } finally {
    await image.close();
  }
}

async function collect<T>(s: ReadableStream<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const c of s as unknown as AsyncIterable<T>) out.push(c);
  return out;
}

for (const kind of kinds) {
  test(`${kind.name}: byte streams give qemu-img's raw conversion`, async (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir('qimg-streams-');
    kind.make(dir);
    const expected = qemuRaw(dir, kind.file);
    await withImage(join(dir, kind.file), async (image) => {
      const parts = await collect(imageReadableStream(image, { chunkSize: 256 * K }));
      assert.deepEqual(Buffer.concat(parts), Buffer.from(expected));
      await pipeline(imageNodeReadable(image), createWriteStream(join(dir, 'streamed.raw')));
    });
    assert.deepEqual(new Uint8Array(readFileSync(join(dir, 'streamed.raw'))), expected);
  });

  test(`${kind.name}: extent chunks lie inside qemu-img map entries and agree on zero`, async (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir('qimg-streams-');
    kind.make(dir);
    const expected = qemuRaw(dir, kind.file);
    const map = qemuMap(dir, kind.file);
    assert.ok(map.some((e) => e.zero) && map.some((e) => !e.zero), 'the image has zero and data runs');
    await withImage(join(dir, kind.file), async (image) => {
      let pos = 0;
      let zeroChunks = 0;
      for (const c of await collect(imageExtentStream(image, { chunkSize: 128 * K }))) {
        assert.equal(c.offset, pos);
        const e = map.find((m) => m.start <= c.offset && c.offset < m.start + m.length);
        assert.ok(e, `no map entry holds ${c.offset}`);
        assert.ok(c.offset + c.length <= e.start + e.length, `chunk ${c.offset}+${c.length} crosses the map entry ${e.start}+${e.length}`);
        assert.equal(c.zero, e.zero, `zero flag at ${c.offset}`);
        if (c.zero) {
          assert.equal(c.data, undefined);
          assert.ok(expected.subarray(c.offset, c.offset + c.length).every((b) => b === 0));
          zeroChunks++;
        } else {
          assert.ok(c.length <= 128 * K);
          assert.deepEqual(c.data, expected.subarray(c.offset, c.offset + c.length));
        }
        pos += c.length;
      }
      assert.equal(pos, image.size);
      assert.ok(zeroChunks > 0);
    });
  });
}

/** Random data with zero stretches: whole clusters, partial clusters, and a long hole left as a hole in the file. */
function writeSource(path: string, size: number): Uint8Array {
  const b = new Uint8Array(size);
  let x = 7;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = (x >>> 24) | 1;
  }
  b.fill(0, 0, 192 * K);
  b.fill(0, 1 * M + 4 * K, 1 * M + 60 * K); // zeros inside one cluster: the cluster is still data
  b.fill(0, 2 * M, 5 * M);
  b.fill(0, size - 100 * K);
  writeFileSync(path, b);
  return b;
}

const CLUSTER = 64 * K;

test('a raw file piped through imageNodeWritable into a fresh qcow2: identical, clean, zero clusters unallocated', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-streams-');
  const size = 8 * M + 12 * K;
  const content = writeSource(join(dir, 'src.raw'), size);
  img(dir, 'create', '-f', 'qcow2', 'dst.qcow2', String(size));
  const progress: number[] = [];
  await withImage(
    join(dir, 'dst.qcow2'),
    (image) => pipeline(createReadStream(join(dir, 'src.raw'), { highWaterMark: 100_000 }), imageNodeWritable(image, { onProgress: (d) => progress.push(d) })),
    true,
  );
  assert.equal(progress[progress.length - 1], size);
  const cmp = qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', 'src.raw', 'dst.qcow2'], { cwd: dir });
  assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
  const check = qemuImg(['check', 'dst.qcow2'], { cwd: dir });
  assert.equal(check.status, 0, check.stdout + check.stderr);
  assert.match(check.stdout, /No errors were found on the image/);
  // A cluster holds data exactly when some byte of it is not zero.
  const map = qemuMap(dir, 'dst.qcow2');
  for (const e of map) {
    for (let c = e.start; c < e.start + e.length; c += CLUSTER) {
      const nonzero = content.subarray(c, Math.min(c + CLUSTER, size)).some((b) => b !== 0);
      assert.equal(e.data, nonzero, `cluster at ${c}: qemu-img map says data=${e.data}`);
    }
  }
});

test('a past-end write through pipeline rejects with bad-argument; an abort with aborted; both leave clean images', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir('qimg-streams-');
  const content = writeSource(join(dir, 'src.raw'), 6 * M);
  img(dir, 'create', '-f', 'qcow2', 'small.qcow2', '4M');
  const e = await withImage(join(dir, 'small.qcow2'), (image) => pipeline(createReadStream(join(dir, 'src.raw')), imageNodeWritable(image)).then(() => undefined, (x: unknown) => x), true);
  assert.ok(isImageError(e, 'bad-argument'), String(e));
  ok(qemuImg(['check', 'small.qcow2'], { cwd: dir }), 'check after a past-end write');

  img(dir, 'create', '-f', 'qcow2', 'half.qcow2', '6M');
  const ac = new AbortController();
  let chunks = 0;
  const source = Readable.from(
    (function* () {
      for (let p = 0; p < content.length; p += 256 * K) {
        if (++chunks === 12) ac.abort();
        yield Buffer.from(content.subarray(p, p + 256 * K));
      }
    })(),
  );
  const a = await withImage(join(dir, 'half.qcow2'), (image) => pipeline(source, imageNodeWritable(image, { signal: ac.signal })).then(() => undefined, (x: unknown) => x), true);
  assert.ok(isImageError(a, 'aborted'), String(a));
  ok(qemuImg(['check', 'half.qcow2'], { cwd: dir }), 'check after an abort');
  // The bytes that were written before the abort are the source's.
  const got = qemuRaw(dir, 'half.qcow2');
  assert.deepEqual(got.subarray(0, 2 * M), content.subarray(0, 2 * M));
  assert.ok(got.subarray(4 * M).every((b) => b === 0), 'nothing after the abort point was written');
});
