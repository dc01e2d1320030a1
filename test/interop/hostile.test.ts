/**
 * Interop, hostile input: damaged headers, backing-chain loops and the memory
 * bound on a huge sparse image. Every failing qimg run must end within a few
 * seconds with exit code 1 and exactly one stderr line starting `qimg: ` (no
 * stack trace); where qemu-img reports the same damage with one line, qimg's
 * message must be qemu-img's after the program-name prefix.
 */
import assert from 'node:assert/strict';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  allocatedBytes,
  describe,
  makeTempDir,
  qemuToolsMissing,
  qimg,
  removeDir,
  run,
  runAsync,
  type RunResult,
} from '../helpers/corpus.js';
import { qimgCommand } from '../helpers/cli.js';
import { maskActualSize } from '../helpers/normalise.js';

/** qimg on a damaged image: a clean error in a few seconds or it counts as a hang. */
const QIMG_TIMEOUT = 6_000;
/** qemu-img is only the oracle; some of its runs on loops take very long, so they are cut short. */
const QEMU_TIMEOUT = 10_000;
const PEAK_RSS_LIMIT = 128 * 1024 * 1024;

type Edit = (h: Buffer) => void;
interface Damage {
  name: string;
  base: 'qcow2' | 'qed';
  edit: Edit;
}

const be32 = (off: number, v: number): Edit => (h) => void h.writeUInt32BE(v >>> 0, off);
const le32 = (off: number, v: number): Edit => (h) => void h.writeUInt32LE(v >>> 0, off);
const orByte = (off: number, mask: number): Edit => (h) => void (h[off] = (h[off] ?? 0) | mask);
const addBe64 = (off: number, d: bigint): Edit => (h) => void h.writeBigUInt64BE(h.readBigUInt64BE(off) + d, off);
const addLe64 = (off: number, d: bigint): Edit => (h) => void h.writeBigUInt64LE(h.readBigUInt64LE(off) + d, off);
const setLe64 = (off: number, v: bigint): Edit => (h) => void h.writeBigUInt64LE(v, off);

const DAMAGES: Damage[] = [
  // qcow2 (big-endian header)
  { name: 'qcow2 unknown incompatible bit 63', base: 'qcow2', edit: orByte(72, 0x80) },
  { name: 'qcow2 unknown incompatible bit 5', base: 'qcow2', edit: orByte(79, 0x20) },
  { name: 'qcow2 compression-type bit with zlib', base: 'qcow2', edit: orByte(79, 0x08) },
  { name: 'qcow2 version 4', base: 'qcow2', edit: be32(4, 4) },
  { name: 'qcow2 cluster_bits 8', base: 'qcow2', edit: be32(20, 8) },
  { name: 'qcow2 cluster_bits 22', base: 'qcow2', edit: be32(20, 22) },
  { name: 'qcow2 crypt_method 3', base: 'qcow2', edit: be32(32, 3) },
  { name: 'qcow2 l1_size 5 Mi entries (too large)', base: 'qcow2', edit: be32(36, 5 * 1024 * 1024) },
  { name: 'qcow2 l1_size 0xffffffff', base: 'qcow2', edit: be32(36, 0xffffffff) },
  { name: 'qcow2 l1_size 0 (too small)', base: 'qcow2', edit: be32(36, 0) },
  { name: 'qcow2 l1_table_offset not cluster aligned', base: 'qcow2', edit: addBe64(40, 0x200n) },
  { name: 'qcow2 refcount_table_clusters 0x10000 (too large)', base: 'qcow2', edit: be32(56, 0x10000) },
  { name: 'qcow2 refcount_table_clusters 0xffffffff', base: 'qcow2', edit: be32(56, 0xffffffff) },
  { name: 'qcow2 refcount_table_offset not cluster aligned', base: 'qcow2', edit: addBe64(48, 0x200n) },
  { name: 'qcow2 nb_snapshots 0xffffffff', base: 'qcow2', edit: be32(60, 0xffffffff) },
  { name: 'qcow2 refcount_order 7', base: 'qcow2', edit: be32(96, 7) },
  { name: 'qcow2 header_length 100', base: 'qcow2', edit: be32(100, 100) },
  { name: 'qcow2 header_length larger than the cluster', base: 'qcow2', edit: be32(100, 0x10008) },
  { name: 'qcow2 compression_type 2', base: 'qcow2', edit: orByte(104, 0x02) },
  // QED (little-endian header)
  { name: 'QED cluster_size 1000', base: 'qed', edit: le32(4, 1000) },
  { name: 'QED table_size 0', base: 'qed', edit: le32(8, 0) },
  { name: 'QED table_size 32', base: 'qed', edit: le32(8, 32) },
  { name: 'QED header_size 0x10000 clusters', base: 'qed', edit: le32(12, 0x10000) },
  { name: 'QED unknown feature 0x100', base: 'qed', edit: setLe64(16, 0x100n) },
  { name: 'QED l1_table_offset not cluster aligned', base: 'qed', edit: addLe64(40, 1n) },
  { name: 'QED image_size 513', base: 'qed', edit: setLe64(48, 513n) },
];

function damage(src: string, dst: string, edit: Edit): void {
  copyFileSync(src, dst);
  const fd = openSync(dst, 'r+');
  try {
    const h = Buffer.alloc(512);
    readSync(fd, h, 0, h.length, 0);
    edit(h);
    writeSync(fd, h, 0, h.length, 0);
  } finally {
    closeSync(fd);
  }
}

function lines(s: string): string[] {
  const l = s.split('\n');
  if (l[l.length - 1] === '') l.pop();
  return l;
}

/** qimg failed cleanly: exit 1, one stderr line `qimg: ...`, no stack, no hang. Returns the message. */
function assertCleanError(r: RunResult, what: string): string {
  assert.ok(!r.timedOut, `${what}: no answer within ${QIMG_TIMEOUT / 1000} s (hang)\n${describe(r)}`);
  assert.equal(r.signal, null, `${what}: killed by ${r.signal}\n${describe(r)}`);
  assert.doesNotMatch(r.stderr, /^\s+at .+[:)]/m, `${what}: stack trace on stderr\n${describe(r)}`);
  const l = lines(r.stderr);
  assert.equal(l.length, 1, `${what}: expected exactly one stderr line\n${describe(r)}`);
  assert.match(l[0] ?? '', /^qimg: /, `${what}: stderr line must start with 'qimg: '\n${describe(r)}`);
  assert.equal(r.status, 1, `${what}: exit code\n${describe(r)}`);
  return (l[0] ?? '').slice('qimg: '.length);
}

/** qemu-img's message for the same failure, if it gave exactly one `qemu-img: ` line. */
function qemuMessage(q: RunResult): string | undefined {
  if (q.timedOut || q.status === 0) return undefined;
  const l = lines(q.stderr);
  return l.length === 1 && l[0]?.startsWith('qemu-img: ') ? l[0].slice('qemu-img: '.length) : undefined;
}

/**
 * Peak RSS of a child: GNU time's rusage when installed, else VmHWM (the
 * kernel's high-water mark, so a late sample still sees the peak) polled from
 * /proc. QIMG_TEST_NO_GNU_TIME=1 forces the fallback (to test it).
 */
async function peakRss(cmd: string, args: string[], cwd: string, timeout: number): Promise<{ r: RunResult; peak: number | undefined; how: string }> {
  if (existsSync('/usr/bin/time') && !process.env.QIMG_TEST_NO_GNU_TIME) {
    const r = await runAsync('/usr/bin/time', ['-v', cmd, ...args], { cwd, timeout });
    const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr);
    return { r, peak: m ? Number(m[1]) * 1024 : undefined, how: '/usr/bin/time -v' };
  }
  if (!existsSync('/proc/self/status')) return { r: await runAsync(cmd, args, { cwd, timeout }), peak: undefined, how: 'none' };
  const { spawn } = await import('node:child_process');
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(cmd, args, { cwd, env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let peak = 0;
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const poll = setInterval(() => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (m) peak = Math.max(peak, Number(m[1]) * 1024);
      } catch {
        /* exited */
      }
    }, 5);
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeout);
    child.on('close', (status, signal) => {
      clearInterval(poll);
      clearTimeout(timer);
      resolve({ r: { status, signal, stdout, stderr, timedOut, ms: Date.now() - t0 }, peak: peak || undefined, how: '/proc VmHWM polling' });
    });
  });
}

const missing = qemuToolsMissing();
if (missing) {
  if (process.env.CI) {
    test('interop hostile: reference tools present (CI)', () => assert.fail(`CI is set but ${missing}`));
  } else {
    console.log(`# interop hostile tests SKIPPED: ${missing}`);
    test('interop hostile', { skip: missing }, () => {});
  }
} else {
  const dir = makeTempDir('qimg-interop-hostile-');
  after(() => removeDir(dir));
  const concurrency = Math.max(2, availableParallelism());
  const sh = (cmd: string, args: string[]): void => {
    const r = run(cmd, args, { cwd: dir });
    if (r.status !== 0) throw new Error(`fixture: ${cmd} ${args.join(' ')}\n${describe(r)}`);
  };

  test('hostile: damaged headers', { concurrency }, async (t) => {
    const bases = { qcow2: join(dir, 'good.qcow2'), qed: join(dir, 'good.qed') };
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', bases.qcow2, '1M']);
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5c 0 64k', bases.qcow2]);
    sh('qemu-img', ['create', '-q', '-f', 'qed', bases.qed, '1M']);
    sh('qemu-io', ['-f', 'qed', '-c', 'write -P 0x5c 0 64k', bases.qed]);

    await Promise.all(
      DAMAGES.map((d, i) =>
        t.test(d.name, async (st) => {
          const file = join(dir, `damaged-${i}.${d.base}`);
          damage(bases[d.base], file, d.edit);
          const q = await runAsync('qemu-img', ['info', file], { cwd: dir, timeout: QEMU_TIMEOUT });
          assert.notEqual(q.status, 0, `fixture: qemu-img info accepts the damaged image\n${describe(q)}`);
          const commands: [string, string[]][] = [
            ['info', ['info', file]],
            ['info --output=json', ['info', '--output=json', file]],
            ['map --output=json', ['map', '--output=json', file]],
            ['convert -O raw', ['convert', '-O', 'raw', file, join(dir, `out-${i}.raw`)]],
          ];
          for (const [label, args] of commands) {
            await st.test(`qimg ${label}`, async (ct) => {
              const oracleArgs = args[0] === 'convert' ? [...args.slice(0, -1), join(dir, `qout-${i}.raw`)] : args;
              const qr = label === 'info' ? q : await runAsync('qemu-img', oracleArgs, { cwd: dir, timeout: QEMU_TIMEOUT });
              const r = await qimg(args, { cwd: dir, timeout: QIMG_TIMEOUT });
              const msg = assertCleanError(r, `qimg ${label}`);
              const expected = qemuMessage(qr);
              if (expected !== undefined) assert.equal(msg, expected, `message differs from qemu-img ${label}`);
              else ct.diagnostic(`qemu-img ${label} gave no one-line error to compare with (${describe(qr).replace(/\n/g, ' | ')})`);
            });
          }
        }),
      ),
    );
  });

  test('hostile: backing-chain loops', { concurrency }, async (t) => {
    // a.qcow2 -> b.qcow2 -> a.qcow2
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', 'loop-a.qcow2', '1M']);
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x61 0 64k', 'loop-a.qcow2']);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'loop-a.qcow2', '-F', 'qcow2', 'loop-b.qcow2']);
    sh('qemu-img', ['rebase', '-u', '-b', 'loop-b.qcow2', '-F', 'qcow2', 'loop-a.qcow2']);
    // self.qcow2 -> self.qcow2
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', 'loop-self.qcow2', '1M']);
    sh('qemu-img', ['rebase', '-u', '-b', 'loop-self.qcow2', '-F', 'qcow2', 'loop-self.qcow2']);

    const cases = [
      ['a -> b -> a', join(dir, 'loop-a.qcow2')],
      ['b -> a -> b', join(dir, 'loop-b.qcow2')],
      ['self-referencing', join(dir, 'loop-self.qcow2')],
    ] as const;
    await Promise.all(
      cases.map(([name, file], i) =>
        t.test(name, async (st) => {
          // qemu-img convert/map on these loop until they run out of file descriptors (or hang): not run.
          await st.test('qimg convert -O raw: clean error', async () => {
            assertCleanError(await qimg(['convert', '-O', 'raw', file, join(dir, `loop-out-${i}.raw`)], { cwd: dir, timeout: QIMG_TIMEOUT }), 'qimg convert');
          });
          await st.test('qimg map --output=json: clean error', async () => {
            assertCleanError(await qimg(['map', '--output=json', file], { cwd: dir, timeout: QIMG_TIMEOUT }), 'qimg map');
          });
          await st.test('qimg info --backing-chain: same error as qemu-img', async (ct) => {
            const q = await runAsync('qemu-img', ['info', '--backing-chain', file], { cwd: dir, timeout: QEMU_TIMEOUT });
            const msg = assertCleanError(await qimg(['info', '--backing-chain', file], { cwd: dir, timeout: QIMG_TIMEOUT }), 'qimg info --backing-chain');
            const expected = qemuMessage(q);
            if (expected !== undefined) assert.equal(msg, expected);
            else ct.diagnostic(`qemu-img info --backing-chain gave no one-line error (${describe(q).replace(/\n/g, ' | ')})`);
          });
          await st.test('qimg info --output=json (no chain walk): the bytes qemu-img prints', async () => {
            const q = await runAsync('qemu-img', ['info', '--output=json', file], { cwd: dir, timeout: QEMU_TIMEOUT });
            assert.equal(q.status, 0, `fixture: qemu-img info\n${describe(q)}`);
            const r = await qimg(['info', '--output=json', file], { cwd: dir, timeout: QIMG_TIMEOUT });
            assert.equal(r.status, 0, `qimg info\n${describe(r)}`);
            assert.equal(maskActualSize(r.stdout), maskActualSize(q.stdout), 'info --output=json bytes (actual-size masked)');
          });
        }),
      ),
    );
  });

  test('hostile: QED table_size=1 (valid per spec, refused by QEMU)', async () => {
    // QEMU cannot open any table_size=1 image, not even its own (qed_check_table_offset
    // takes end == start for an overflow); qimg may read it or refuse it, but cleanly.
    const file = join(dir, 'qed-t1.qed');
    sh('qemu-img', ['create', '-q', '-f', 'qed', '-o', 'cluster_size=4K,table_size=1', file, '1M']);
    for (const args of [['info', '--output=json', file], ['convert', '-O', 'raw', file, join(dir, 'qed-t1.raw')]]) {
      const r = await qimg(args, { cwd: dir, timeout: QIMG_TIMEOUT });
      if (r.status !== 0) assertCleanError(r, `qimg ${args[0]}`);
      else assert.ok(!r.timedOut && lines(r.stderr).length === 0, `qimg ${args[0]}: success with stderr output\n${describe(r)}`);
    }
  });

  test('hostile: 4 TiB sparse image converts to raw in bounded memory', async (t) => {
    const file = join(dir, 'huge.qcow2');
    const out = join(dir, 'huge.raw');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', file, '4T']);
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 9 4095G 64k', file]);
    const { r, peak, how } = await peakRss(...qimgCommand(['convert', '-O', 'raw', file, out]), dir, 30_000);
    assert.ok(!r.timedOut, `qimg convert of the 4 TiB image did not finish in 30 s\n${describe(r)}`);
    assert.equal(r.status, 0, `qimg convert\n${describe(r)}`);
    const c = run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', out, file], { cwd: dir });
    assert.equal(c.status, 0, `qemu-img compare huge.raw huge.qcow2\n${describe(c)}`);
    const allocated = allocatedBytes(out);
    assert.ok(allocated < 16 * 1024 * 1024, `huge.raw occupies ${allocated} bytes on the host (not sparse)`);
    if (peak === undefined) {
      if (process.env.CI) assert.fail(`could not measure peak RSS (${how})`);
      t.diagnostic('peak RSS not measured: neither /usr/bin/time nor /proc available');
      return;
    }
    t.diagnostic(`4 TiB convert: ${r.ms} ms, peak RSS ${(peak / 1048576).toFixed(1)} MiB (${how})`);
    assert.ok(peak < PEAK_RSS_LIMIT, `peak RSS ${(peak / 1048576).toFixed(1)} MiB >= 128 MiB (${how})`);
  });
}
