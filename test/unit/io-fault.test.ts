/**
 * Storage failures in the middle of a workload (a disk that fills up or
 * goes bad): for qcow2 and QED, a fault is injected at every mutating
 * storage operation the workload issues, once and sticky, ENOSPC and EIO.
 * At each point:
 * - the failing request rejects with ImageError 'io' carrying the errno,
 *   and nothing hangs;
 * - the bytes that survive (everything written, and separately only what
 *   was flushed: a crash right after the fault) open, check without
 *   corruption (leaks are allowed), and read back every write
 *   acknowledged before the last completed flush;
 * - no byte reads as something nobody wrote: metadata written after a
 *   failed data write never points at clusters whose data did not land.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { openImage, type Host } from '../../src/block/open.js';
import type { Image } from '../../src/block/image.js';
import { isImageError } from '../../src/errors.js';
import { MemoryStorage } from '../../src/io/memory.js';
import type { Storage } from '../../src/io/storage.js';
import { nodeCodecs } from '../../src/io/codecs.js';
import '../../src/formats/index.js';
import { createQcow2 } from '../../src/formats/qcow2/create.js';
import type { Qcow2CreateOptions } from '../../src/formats/qcow2/create-options.js';
import { createQed } from '../../src/formats/qed/create.js';
import { checkQcow2 } from '../../src/formats/qcow2/check.js';
import { checkQedImage } from '../../src/formats/qed/check.js';
import { parseHeader as parseQedHeader } from '../../src/formats/qed/header.js';
import { FaultyStorage, type FaultErrno, type FaultPlan } from '../helpers/faulty-storage.js';
import { bytesImage } from '../helpers/tools.js';
import { convertImages, ConvertError } from '../../src/ops/convert.js';
import { imageTarget } from '../../src/ops/convert-targets.js';

const SIZE = 512 * 1024;

/**
 * Guest data: never zero, so a cluster whose data never landed (zeros past
 * the end of the file) cannot pass for written data.
 */
function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = ((seed + (i >> 6)) % 200) + 1;
  return b;
}

/**
 * The images have a raw backing file full of non-zero data: unallocated
 * clusters read it, so an L2 entry that points at a cluster whose data
 * never landed reads differently from anything the guest could see.
 */
const BACKING = pattern(SIZE, 77);

function hostFor(storage: Storage): Host {
  return {
    openStorage: async (path) => (path === 'base.raw' ? new MemoryStorage(BACKING, { writable: false, name: path }) : storage),
    resolve: (_p, n) => n,
    identity: async (p) => p,
    codecs: nodeCodecs,
  };
}

type Step = { kind: 'write'; offset: number; data: Uint8Array } | { kind: 'zero'; offset: number; length: number; unmap: boolean } | { kind: 'flush' };

function workload(cluster: number): Step[] {
  const steps: Step[] = [];
  const rnd = fc.sample(fc.tuple(fc.nat(SIZE - 1), fc.integer({ min: 1, max: cluster * 3 }), fc.nat(9), fc.nat(254)), { numRuns: 60, seed: 5 });
  for (const [offset, len0, kind, seed] of rnd) {
    const length = Math.min(len0, SIZE - offset);
    if (kind < 6) steps.push({ kind: 'write', offset, data: pattern(length, seed) });
    else if (kind < 8) steps.push({ kind: 'zero', offset, length, unmap: kind === 7 });
    else steps.push({ kind: 'flush' });
  }
  steps.push({ kind: 'flush' });
  return steps;
}

interface Req {
  offset: number;
  bytes: Uint8Array;
  /** The guest contents it replaced (failed requests only). */
  old?: Uint8Array;
}

const covers = (r: Req, i: number): boolean => i >= r.offset && i < r.offset + r.bytes.length;

/**
 * The guest contents as far as the requests tell: `cur` where every
 * request succeeded; bytes a failed request touched (and nothing wrote
 * since) may hold the old or the new value, in any mix.
 */
class Model {
  cur = BACKING.slice();
  uncertain = new Uint8Array(SIZE);
  failed: Req[] = [];
  /** At the last completed flush. */
  durable = { cur: BACKING.slice(), uncertain: new Uint8Array(SIZE) };
  /** Requests issued since the last completed flush. */
  since: Req[] = [];

  apply(offset: number, bytes: Uint8Array, ok: boolean): void {
    const r: Req = { offset, bytes };
    this.since.push(r);
    if (ok) {
      this.cur.set(bytes, offset);
      this.uncertain.fill(0, offset, offset + bytes.length);
    } else {
      r.old = this.cur.slice(offset, offset + bytes.length);
      this.failed.push(r);
      this.uncertain.fill(1, offset, offset + bytes.length);
    }
  }

  flushed(): void {
    this.durable = { cur: this.cur.slice(), uncertain: this.uncertain.slice() };
    this.since = [];
  }

  private failedMayHold(i: number, v: number): boolean {
    return this.failed.some((r) => covers(r, i) && (r.bytes[i - r.offset] === v || r.old![i - r.offset] === v));
  }

  /** Allowed after everything the guest did (close included) completed. */
  allowedNow(i: number, v: number): boolean {
    return v === this.cur[i] || (this.uncertain[i] === 1 && this.failedMayHold(i, v));
  }

  /** Allowed when only the last completed flush is certain. */
  allowedAfterCrash(i: number, v: number): boolean {
    if (v === this.durable.cur[i] || this.allowedNow(i, v)) return true;
    if (this.durable.uncertain[i] === 1 && this.failedMayHold(i, v)) return true;
    return this.since.some((r) => covers(r, i) && (r.bytes[i - r.offset] === v || r.old?.[i - r.offset] === v));
  }
}

/** Fails the test instead of waiting forever. */
function bounded<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within 10 s`)), 10_000);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

interface Format {
  name: string;
  fmt: 'qcow2' | 'qed';
  cluster: number;
  create(): Promise<Uint8Array>;
  /** Corruptions (and check errors) our check finds in the bytes. */
  corruptions(bytes: Uint8Array): Promise<string | undefined>;
}

const formats: Format[] = [
  {
    name: 'qcow2, 4K clusters',
    fmt: 'qcow2',
    cluster: 4096,
    async create() {
      const st = new MemoryStorage();
      await createQcow2(st, qcow2Options(4096, false), { codecs: nodeCodecs });
      return st.bytes();
    },
    async corruptions(bytes) {
      const r = await checkQcow2(new MemoryStorage(bytes, { writable: false }), { fix: 'none' });
      if (r.corruptions || r.checkErrors || r.failed) return `${r.corruptions} corruptions, ${r.checkErrors} check errors ${r.failed ?? ''}: ${r.messages.slice(0, 3).join('; ')}`;
      return undefined;
    },
  },
  {
    name: 'qcow2, 512B clusters, lazy refcounts',
    fmt: 'qcow2',
    cluster: 512,
    async create() {
      const st = new MemoryStorage();
      await createQcow2(st, qcow2Options(512, true), { codecs: nodeCodecs });
      return st.bytes();
    },
    async corruptions(bytes) {
      // A dirty image is repaired on open (QEMU does the same): what must not be is corruption beyond that.
      const st = new MemoryStorage(bytes);
      const first = await checkQcow2(st, { fix: 'none' });
      if (first.checkErrors || first.failed) return `check errors: ${first.messages.slice(0, 3).join('; ')}`;
      const dirty = (bytes[79]! & 1) !== 0;
      if (first.corruptions && !dirty) return `${first.corruptions} corruptions: ${first.messages.slice(0, 3).join('; ')}`;
      return undefined;
    },
  },
  {
    name: 'QED, 4K clusters',
    fmt: 'qed',
    cluster: 4096,
    async create() {
      const st = new MemoryStorage();
      await createQed(st, { size: SIZE, clusterSize: 4096, tableSize: 1, backingFile: 'base.raw', backingFmt: 'raw' });
      return st.bytes();
    },
    async corruptions(bytes) {
      const { header, geometry } = parseQedHeader(bytes.subarray(0, 4096), bytes.length);
      const r = await checkQedImage(new MemoryStorage(bytes, { writable: false }), header, geometry, { fix: false });
      if (r.corruptions || r.checkErrors) return `${r.corruptions} corruptions, ${r.checkErrors} check errors`;
      return undefined;
    },
  },
];

function qcow2Options(clusterSize: number, lazyRefcounts: boolean): Qcow2CreateOptions & { size: number } {
  return { size: SIZE, version: 3, clusterSize, refcountBits: 16, lazyRefcounts, extendedL2: false, compressionType: 'zlib', preallocation: 'off', dataFileRaw: false, backingFile: 'base.raw', backingFmt: 'raw' };
}

interface RunResult {
  model: Model;
  storage: FaultyStorage;
  closed: boolean;
  errors: unknown[];
}

/** The workload on a fresh image with the fault plan; stops at the first failure when the fault is sticky. */
async function run(f: Format, base: Uint8Array, plan: FaultPlan, steps: Step[]): Promise<RunResult> {
  const storage = new FaultyStorage(base, plan, `fault.${f.fmt}`);
  const model = new Model();
  const errors: unknown[] = [];
  let img: Image;
  try {
    img = await bounded(openImage(`fault.${f.fmt}`, { host: hostFor(storage), writable: true, format: f.fmt }), 'open');
  } catch (e) {
    errors.push(e);
    return { model, storage, closed: false, errors };
  }
  for (const s of steps) {
    try {
      if (s.kind === 'write') {
        try {
          await bounded(img.write(s.offset, s.data), 'write');
        } catch (e) {
          model.apply(s.offset, s.data, false);
          throw e;
        }
        model.apply(s.offset, s.data, true);
      } else if (s.kind === 'zero') {
        const zeros = new Uint8Array(s.length);
        try {
          await bounded(img.writeZeroes(s.offset, s.length, { mayUnmap: s.unmap }), 'writeZeroes');
        } catch (e) {
          model.apply(s.offset, zeros, false);
          throw e;
        }
        model.apply(s.offset, zeros, true);
      } else {
        await bounded(img.flush(), 'flush');
        model.flushed();
      }
    } catch (e) {
      errors.push(e);
      if (plan.sticky) break;
    }
  }
  let closed = false;
  try {
    await bounded(img.close(), 'close');
    closed = true;
  } catch (e) {
    errors.push(e);
    // qemu's words when the cached metadata cannot be written back at close.
    if (f.fmt === 'qcow2') assert.match(String((e as Error).message), /^Failed to flush the L2 table cache: (No space left on device|Input\/output error)$/);
  }
  return { model, storage, closed, errors };
}

async function readAll(f: Format, bytes: Uint8Array): Promise<Uint8Array> {
  const img = await openImage(`fault.${f.fmt}`, { host: hostFor(new MemoryStorage(bytes, { writable: false })), format: f.fmt });
  const got = new Uint8Array(SIZE);
  await img.read(0, got);
  await img.close();
  return got;
}

function firstBad(got: Uint8Array, ok: (i: number, v: number) => boolean): number {
  for (let i = 0; i < got.length; i++) if (!ok(i, got[i]!)) return i;
  return -1;
}

for (const f of formats) {
  test(`storage faults at every operation leave a consistent image: ${f.name}`, { timeout: 600_000 }, async () => {
    const base = await f.create();
    const steps = workload(f.cluster);
    const clean = await run(f, base, { at: Infinity, errno: 'EIO' }, steps);
    assert.equal(clean.errors.length, 0, String(clean.errors[0]));
    const total = clean.storage.ops;
    assert.ok(total > 50, `only ${total} storage operations`);
    const plans: FaultPlan[] = [];
    for (let at = 0; at < total; at++) {
      const errno: FaultErrno = at % 2 === 0 ? 'ENOSPC' : 'EIO';
      plans.push({ at, errno, sticky: true });
      // Transient faults (and short writes) on a sample: the writer then goes on after the error.
      if (at % 3 === 0) plans.push({ at, errno: errno === 'EIO' ? 'ENOSPC' : 'EIO', partial: at % 2 === 0 ? 0.5 : 0 });
    }
    for (const plan of plans) {
      const what = `fault ${plan.errno} at op ${plan.at}/${total}${plan.sticky ? ' (sticky)' : ''}`;
      const r = await run(f, base, plan, steps);
      assert.equal(r.storage.faultedAt, plan.at, `${what}: the fault did not happen`);
      assert.ok(r.errors.length > 0, `${what}: nothing reported the failure`);
      for (const e of r.errors) {
        assert.ok(isImageError(e, 'io'), `${what}: not an io ImageError: ${String(e)}`);
        assert.equal(e.errno, plan.errno, what);
      }
      // Everything that reached the storage.
      const live = r.storage.bytes();
      const bad = await f.corruptions(live);
      assert.equal(bad, undefined, `${what}: ${bad}`);
      const got = await readAll(f, live);
      const allowed = r.closed ? (i: number, v: number) => r.model.allowedNow(i, v) : (i: number, v: number) => r.model.allowedAfterCrash(i, v);
      const i = firstBad(got, allowed);
      assert.equal(i, -1, `${what}: byte ${i} reads ${got[i]}, expected ${r.model.cur[i]} (closed: ${r.closed})`);
      // A crash right after the fault: only what was flushed.
      const durable = r.storage.durableBytes();
      const badD = await f.corruptions(durable);
      assert.equal(badD, undefined, `${what}, after a crash: ${badD}`);
      const gotD = await readAll(f, durable);
      const j = firstBad(gotD, (k, v) => r.model.allowedAfterCrash(k, v));
      assert.equal(j, -1, `${what}, after a crash: byte ${j} reads ${gotD[j]}, flushed ${r.model.durable.cur[j]}`);
    }
    console.log(`# ${f.name}: ${plans.length} fault points over ${total} storage operations`);
  });
}

test('convert into qcow2 and QED on a disk that fills up: qemu-img\'s error, no hang, a consistent target', { timeout: 300_000 }, async () => {
  const src = pattern(SIZE, 9);
  const source = bytesImage(src, 'src.raw');
  for (const fmt of ['qcow2', 'qed'] as const) {
    const empty = new MemoryStorage();
    if (fmt === 'qcow2') await createQcow2(empty, { ...qcow2Options(4096, false), backingFile: undefined, backingFmt: undefined }, { codecs: nodeCodecs });
    else await createQed(empty, { size: SIZE, clusterSize: 4096, tableSize: 1 });
    const base = empty.bytes();
    const count = new FaultyStorage(base);
    const ok = await openImage(`t.${fmt}`, { host: hostFor(count), writable: true, format: fmt });
    await convertImages([source], imageTarget(ok), { parallel: 4, chunkSize: 64 * 1024 });
    const copying = count.ops;
    await ok.close();
    for (let at = 0; at < count.ops; at++) {
      const what = `${fmt}: ENOSPC from op ${at}/${count.ops}`;
      const storage = new FaultyStorage(base, { at, errno: 'ENOSPC', sticky: true });
      const img = await openImage(`t.${fmt}`, { host: hostFor(storage), writable: true, format: fmt });
      const converting = bounded(convertImages([source], imageTarget(img), { parallel: 4, chunkSize: 64 * 1024 }), what);
      if (at < copying) {
        await assert.rejects(converting, (e: unknown) => {
          // A data write names its byte, as qemu-img does; the final flush fails with the bare errno.
          if (e instanceof ConvertError) assert.match(e.message, /^error while writing at byte \d+: No space left on device$/, what);
          else assert.ok(isImageError(e, 'io') && e.errno === 'ENOSPC', `${what}: ${String(e)}`);
          return true;
        });
        await bounded(img.close(), `${what}: close`).catch((e: unknown) => assert.ok(isImageError(e, 'io'), `${what}: close: ${String(e)}`));
      } else {
        // Only closing is left to fail: it must say so (the CLI turns this into exit 1).
        await converting;
        await assert.rejects(bounded(img.close(), `${what}: close`), (e: unknown) => isImageError(e, 'io') && e.errno === 'ENOSPC');
      }
      const f = formats.find((x) => x.fmt === fmt)!;
      const bad = await f.corruptions(storage.bytes());
      assert.equal(bad, undefined, `${what}: ${bad}`);
      // What the target holds is the source's data or nothing (zeros), never anything else.
      const got = await readAll(f, storage.bytes());
      for (let i = 0; i < SIZE; i++) if (got[i] !== 0 && got[i] !== src[i]) assert.fail(`${what}: byte ${i} reads ${got[i]}`);
    }
  }
});
