/**
 * qimg serve as qemu-nbd is used from scripts: --fork returns once it
 * listens, it exits after the last client (or on SIGTERM with -t, flushing
 * and removing its socket), -s keeps the image untouched, -l exports an
 * internal snapshot, and bad options fail as qemu-nbd's do.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { qemuImg, qemuIo, qimg, tmpDir } from '../helpers/tools.js';
import { qimgCommand } from '../helpers/cli.js';
import { requireNbdTools, runAsync, unixUri, waitForSocket } from '../helpers/nbd.js';

async function gone(pid: number, timeoutMs = 10000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    await sleep(50);
  }
  return false;
}

test('--fork returns once listening; the server exits after its last client and removes its socket and pid file', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'f.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '4M']);
  qemuIo(['-c', 'write -P 0x61 0 1M', img]);
  const sock = join(dir, 's.sock');
  const pidFile = join(dir, 'pid');
  const r = await runAsync(...qimgCommand(['serve', '--fork', '--pid-file', pidFile, '-k', sock, '-f', 'qcow2', img]));
  assert.equal(r.status, 0, r.stderr);
  assert.ok(existsSync(sock), 'listening when --fork returns');
  const pid = Number(readFileSync(pidFile, 'utf8'));
  assert.ok(pid > 0 && pid !== process.pid);
  const io = await runAsync('qemu-io', ['-f', 'raw', '-c', 'read -P 0x61 0 1M', '-c', 'write -P 0x62 1M 64k', unixUri(sock)]);
  assert.equal(io.status, 0, io.stderr);
  assert.match(io.stdout, /wrote 65536\/65536 bytes/);
  assert.ok(await gone(pid), 'exits after the last client');
  assert.equal(existsSync(sock), false);
  assert.equal(existsSync(pidFile), false);
  assert.equal(qemuIo(['-c', 'read -P 0x62 1M 64k', img]).status, 0);
  assert.equal(qemuImg(['check', img]).status, 0);
});

test('with -t the server outlives its clients and SIGTERM flushes, closes and removes the socket', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 't.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '8M']);
  const sock = join(dir, 's.sock');
  const [cmd, args] = qimgCommand(['serve', '-t', '-e', '2', '-k', sock, '-x', 'disk', img]);
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await waitForSocket(sock, child);
  for (let i = 0; i < 2; i++) {
    const w = await runAsync('qemu-io', ['-f', 'raw', '-c', `write -P ${0x70 + i} ${i}M 512k`, unixUri(sock, 'disk')]);
    assert.equal(w.status, 0, w.stderr);
  }
  assert.equal(child.exitCode, null, 'still serving');
  const info = await runAsync('nbdinfo', [unixUri(sock, 'disk')]);
  assert.match(info.stdout, /can_multi_conn: true/);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  assert.equal(await exited, 0, stderr);
  assert.equal(stderr, '');
  assert.equal(existsSync(sock), false);
  assert.equal(qemuImg(['check', img]).status, 0);
  assert.equal(qemuIo(['-c', 'read -P 0x70 0 512k', '-c', 'read -P 0x71 1M 512k', img]).stdout.includes('Pattern verification failed'), false);
});

test('-s writes into a temporary overlay; -l exports an internal snapshot read-only', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 's.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '4M']);
  qemuIo(['-c', 'write -P 0x11 0 1M', img]);
  qemuImg(['snapshot', '-c', 'snap1', img]);
  qemuIo(['-c', 'write -P 0x22 0 1M', img]);
  const sock = join(dir, 's.sock');
  assert.equal((await runAsync(...qimgCommand(['serve', '--fork', '-s', '-k', sock, img]))).status, 0);
  const w = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 64k', '-c', 'read -P 0x33 0 64k', unixUri(sock)]);
  assert.doesNotMatch(w.stdout, /failed/);
  await sleep(300);
  assert.doesNotMatch(qemuIo(['-c', 'read -P 0x22 0 1M', img]).stdout, /failed/, 'the image is untouched');

  const sock2 = join(dir, 'l.sock');
  const pidFile = join(dir, 'l.pid');
  assert.equal((await runAsync(...qimgCommand(['serve', '--fork', '-t', '--pid-file', pidFile, '-l', 'snap1', '-k', sock2, img]))).status, 0);
  const info = await runAsync('nbdinfo', [unixUri(sock2)]);
  assert.match(info.stdout, /is_read_only: true/);
  const rd = await runAsync('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x11 0 1M', unixUri(sock2)]);
  assert.doesNotMatch(rd.stdout, /failed/);
  const wr = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write 0 512', unixUri(sock2)]);
  assert.notEqual(wr.stdout + wr.stderr, '');
  assert.match(wr.stdout + wr.stderr, /read-only|Operation not permitted|Permission denied/);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  process.kill(pid, 'SIGTERM');
  assert.ok(await gone(pid));
});

test('bad options fail as qemu-nbd fails them', (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'o.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']);
  const cases: Array<[string[], RegExp]> = [
    [['serve'], /^qimg: Invalid number of arguments\nTry 'qimg --help' for more information\n$/],
    [['serve', '-e', 'x', img], /^qimg: Invalid shared device number 'x'\n$/],
    [['serve', '-r', '-B', 'b0', img], /^qimg: Bitmap 'b0' is not found\n$/],
    [['serve', '--foo', img], /unrecognized option '--foo'/],
    [['serve', '-c', '/dev/nbd0', img], /unrecognized option '-c'|invalid option/],
    [['serve', '-f', 'qcow2', join(dir, 'missing.qcow2')], /^qimg: Failed to blk_new_open '.*missing.qcow2': Could not open '.*missing.qcow2': No such file or directory\n$/],
    [['serve', '--tls-creds', 'nope', img], /^qimg: No TLS credentials with id 'nope'\n$/],
  ];
  for (const [args, re] of cases) {
    const r = qimg(args);
    assert.equal(r.status, 1, args.join(' '));
    assert.match(r.stderr, re, args.join(' '));
  }
  const help = qimg(['serve', '--help']);
  assert.equal(help.status, 0);
  for (const opt of ['--port', '--socket', '--shared', '--persistent', '--bitmap', '--allocation-depth', '--snapshot', '--load-snapshot', '--tls-creds', '--fork', '--pid-file']) assert.ok(help.stdout.includes(opt), opt);
});

test('SIGKILL of the server after flushed writes leaves a consistent image holding them', async (t) => {
  if (!requireNbdTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'k.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', img, '16M']);
  const sock = join(dir, 'k.sock');
  const pidFile = join(dir, 'k.pid');
  assert.equal((await runAsync(...qimgCommand(['serve', '--fork', '-t', '-e', '0', '--pid-file', pidFile, '-k', sock, img]))).status, 0);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  const w = await runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 2M', '-c', 'write -P 0x3d 5M 1M', '-c', 'flush', unixUri(sock)]);
  assert.equal(w.status, 0, w.stderr);
  // Unflushed writes in flight when the server dies: they may or may not land, but must not corrupt.
  const busy = runAsync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3e 8M 4M', unixUri(sock)]);
  await sleep(50);
  process.kill(pid, 'SIGKILL');
  await busy;
  assert.ok(await gone(pid));
  const check = qemuImg(['check', img]);
  assert.ok(check.status === 0 || check.status === 3, `qemu-img check: ${check.status}\n${check.stdout}${check.stderr}`);
  const rd = qemuIo(['-r', '-U', '-c', 'read -P 0x3c 0 2M', '-c', 'read -P 0x3d 5M 1M', img]);
  assert.doesNotMatch(rd.stdout, /failed/);
});
