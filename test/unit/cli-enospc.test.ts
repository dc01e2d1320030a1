/**
 * A really full filesystem: a small tmpfs is mounted, and convert and io
 * run out of space on it. Each must end with qemu's one-line message and
 * exit code (no stack trace), leave an image qemu-img check accepts, and
 * keep what was flushed before. Mounting needs root: without it the tests
 * skip and say why, except under CI (which runs as root), where they fail.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';

const work = tmpDir('qimg-enospc-');
const mnt = join(work, 'mnt');
let unmounted: string | undefined = 'not mounted yet';

function unmount(): void {
  if (unmounted !== undefined) return;
  spawnSync('umount', [mnt]);
  unmounted = 'unmounted';
}

before(() => {
  mkdirSync(mnt);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    const why = `cannot mount a tmpfs (needs root): ${r.error?.message ?? r.stderr.trim().split('\n')[0]}`;
    if (process.env.CI) throw new Error(why);
    unmounted = why;
    return;
  }
  unmounted = undefined;
  // The mount must not outlive the tests, whatever happens to them.
  process.prependListener('exit', unmount);
});

after(() => unmount());

/** Skips (outside CI) when there is no tmpfs or no qemu; empties the tmpfs. */
function ready(t: { skip(message?: string): void }): boolean {
  if (!requireTools(t)) return false;
  if (unmounted !== undefined) {
    t.skip(unmounted);
    return false;
  }
  for (const f of readdirSync(mnt)) rmSync(join(mnt, f), { force: true });
  return true;
}

/** 16 MiB of random data: twice the size of the filesystem. */
function source(): string {
  const p = join(work, 'src.raw');
  writeFileSync(p, randomBytes(16 << 20));
  return p;
}

function oneLine(r: RunResult, pattern: RegExp, what: string): void {
  assert.equal(r.status, 1, `${what}: exit ${r.status}\n${r.stderr}`);
  assert.match(r.stderr, pattern, what);
  assert.equal(r.stderr.split('\n').length, 2, `${what}: one line expected:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /\n\s+at /, `${what}: stack trace`);
}

const WRITE_FAILED = /^qimg: error while writing at byte \d+: No space left on device\n$/;

for (const fmt of ['qcow2', 'qed', 'raw'] as const) {
  test(`convert -O ${fmt} onto a full filesystem: qemu's message, exit 1, a consistent result`, (t) => {
    if (!ready(t)) return;
    const src = source();
    const q = qemuImg(['convert', '-f', 'raw', '-O', fmt, src, join(mnt, `q.${fmt}`)]);
    assert.equal(q.status, 1);
    assert.match(q.stderr, /^qemu-img: error while writing at byte \d+: No space left on device\n$/);
    rmSync(join(mnt, `q.${fmt}`));
    const out = join(mnt, `out.${fmt}`);
    oneLine(qimg(['convert', '-f', 'raw', '-O', fmt, src, out]), WRITE_FAILED, `convert -O ${fmt}`);
    if (fmt === 'raw') return;
    const c = qemuImg(['check', out]);
    // qcow2 is left clean, as qemu-img leaves it; QED leaks what it had allocated (so does QEMU's).
    assert.ok(fmt === 'qcow2' ? c.status === 0 : c.status === 0 || c.status === 3, `qemu-img check exit ${c.status}\n${c.stdout}${c.stderr}`);
  });
}

/** qemu-io's output without the timing lines. */
const untimed = (s: string): string =>
  s
    .split('\n')
    .filter((l) => !/ops; /.test(l))
    .join('\n');

for (const fmt of ['qcow2', 'qed'] as const) {
  test(`io writes past a full filesystem (${fmt}): "write failed: No space left on device", flushed data intact`, (t) => {
    if (!ready(t)) return;
    const cmds = ['write -P 1 0 1M', 'flush', 'write -P 2 1M 16M', 'read -P 1 0 1M'];
    const args = cmds.flatMap((c) => ['-c', c]);
    const qpath = join(mnt, `q.${fmt}`);
    assert.equal(qemuImg(['create', '-q', '-f', fmt, qpath, '64M']).status, 0);
    const q = qemuIo(['-f', fmt, ...args, qpath]);
    rmSync(qpath);
    const path = join(mnt, `a.${fmt}`);
    assert.equal(qimg(['create', '-q', '-f', fmt, path, '64M']).status, 0);
    const r = qimg(['io', '-f', fmt, ...args, path]);
    assert.equal(r.status, 1, r.stderr);
    assert.equal(q.status, 1);
    assert.equal(r.stderr, '');
    assert.equal(untimed(r.stdout), untimed(q.stdout));
    assert.match(r.stdout, /^write failed: No space left on device$/m);
    const c = qemuImg(['check', path]);
    assert.ok(c.status === 0 || c.status === 3, `qemu-img check exit ${c.status}\n${c.stdout}${c.stderr}`);
    const back = qemuIo(['-f', fmt, '-r', '-c', 'read -P 1 0 1M', path]);
    assert.equal(back.status, 0, back.stdout);
    assert.doesNotMatch(back.stdout, /verification failed/);
  });
}

test('create -o preallocation=full on a full filesystem: the line and exit code of qemu-img', (t) => {
  if (!ready(t)) return;
  const path = join(mnt, 'p.raw');
  const args = ['create', '-q', '-f', 'raw', '-o', 'preallocation=full', path, '64M'];
  const q = qemuImg(args);
  rmSync(path, { force: true });
  const r = qimg(args);
  oneLine(r, /^qimg: .*p\.raw: Could not write zeros for preallocation: No space left on device\n$/, 'create');
  assert.equal(asQemu(r.stderr), q.stderr);
  assert.equal(r.status, q.status);
});

/** Fill what is left of the tmpfs. */
function fill(): void {
  try {
    writeFileSync(join(mnt, 'fill'), Buffer.alloc(8 << 20));
  } catch {
    // ENOSPC: full now, which is the point.
  }
}

test('check -r all that must rebuild the refcounts on a full filesystem: the lines and exit code of qemu-img', (t) => {
  if (!ready(t)) return;
  const broken = join(work, 'broken.qcow2');
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', broken, '64M']).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 1 0 4M', broken]).status, 0);
  // Drop the first refcount table entry: every cluster then has refcount 0, and repair must rebuild.
  const bytes = readFileSync(broken);
  bytes.writeBigUInt64BE(0n, Number(bytes.readBigUInt64BE(48)));
  writeFileSync(broken, bytes);
  const path = join(mnt, 'r.qcow2');
  const runOn = (tool: (a: string[]) => RunResult): RunResult => {
    for (const f of readdirSync(mnt)) rmSync(join(mnt, f), { force: true });
    copyFileSync(broken, path);
    fill();
    return tool(['check', '-r', 'all', path]);
  };
  const q = runOn(qemuImg);
  const r = runOn(qimg);
  assert.equal(r.status, q.status, r.stderr);
  assert.equal(r.status, 1);
  assert.equal(asQemu(r.stderr), q.stderr);
  assert.match(r.stderr, /^qimg: Check failed: No space left on device$/m);
});
