/**
 * One qemu-img command run by qemu-img and by qimg on twin directories made
 * by the same qemu-img/qemu-io setup, and what the results look like: the
 * command's stdout, stderr and exit code, and each image's info, check,
 * map and guest content as qemu-img sees them.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { asQemu, qemuImg, qimg, tmpDir, type RunResult } from './tools.js';

/** Run a shell setup (qemu-img/qemu-io commands) in `dir`; it must succeed. */
export function setUp(dir: string, script: string): void {
  const r = spawnSync('bash', ['-euc', script], { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, `setup failed: ${r.stderr}`);
}

export interface Twins {
  qemu: string;
  ours: string;
  qemuRun: RunResult;
  oursRun: RunResult;
}

/** The same setup in two directories, then `args` by qemu-img in one and qimg in the other. */
export function twinRun(script: string, args: readonly string[]): Twins {
  const root = tmpDir('qimg-twins-');
  const qemu = join(root, 'qemu');
  const ours = join(root, 'ours');
  mkdirSync(qemu);
  mkdirSync(ours);
  setUp(qemu, script);
  setUp(ours, script);
  return { qemu, ours, qemuRun: qemuImg(args, { cwd: qemu }), oursRun: qimg(args, { cwd: ours }) };
}

/** stdout, stderr (with qemu-img's name) and exit code are qemu-img's. */
export function assertSameOutput(t: Twins): void {
  assert.equal(asQemu(t.oursRun.stderr), t.qemuRun.stderr, 'stderr');
  assert.equal(t.oursRun.stdout, t.qemuRun.stdout, 'stdout');
  assert.equal(t.oursRun.status, t.qemuRun.status, 'exit code');
}

const infoJson = (dir: string, img: string): Record<string, unknown> => {
  const r = qemuImg(['info', '-U', '--output=json', img], { cwd: dir });
  assert.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout) as Record<string, unknown>;
  delete info['actual-size'];
  return info;
};

/** `img` in both directories: same info, qemu-img check clean, same guest content; optionally the same map. */
export function assertSameImage(t: Twins, img: string, opts: { map?: boolean } = {}): void {
  assert.deepEqual(infoJson(t.ours, img), infoJson(t.qemu, img), `info of ${img}`);
  const check = qemuImg(['check', img], { cwd: t.ours });
  assert.ok(check.status === 0 || /does not support checks/.test(check.stderr), `check of ${img}: ${check.stdout}${check.stderr}`);
  const cmp = qemuImg(['compare', '-U', join(t.qemu, img), join(t.ours, img)]);
  assert.equal(cmp.status, 0, `content of ${img}: ${cmp.stdout}${cmp.stderr}`);
  if (opts.map) {
    const map = (dir: string) => qemuImg(['map', '-U', '--output=json', img], { cwd: dir }).stdout;
    assert.equal(map(t.ours), map(t.qemu), `map of ${img}`);
  }
}
