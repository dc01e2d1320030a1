/**
 * Image locks against the real QEMU tools: while qemu-io holds an image,
 * qimg must refuse what qemu-img/qemu-io refuse, with the same words and exit
 * codes, and leave the image alone; while qimg holds one, qemu must refuse.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { lockingAvailable } from '../../src/io/locks.js';
import { qemuImg, qemuIo, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';
import { qimgMain } from '../helpers/cli.js';

/** Tools and the addon, or a visible skip (outside CI) / a failure (in CI). */
function ready(t: TestContext): boolean {
  if (!requireTools(t)) return false;
  if (lockingAvailable()) return true;
  if (process.env.CI) throw new Error('the ofdlock addon is required when CI is set (npm install builds it)');
  t.skip('ofdlock addon not built (npm install builds it)');
  return false;
}

interface Holder {
  stop(): Promise<void>;
}

/**
 * Start an interactive qemu-io or qimg io on `img` that keeps it open until
 * stopped; resolves once it has answered a read, so its locks are in place.
 */
function hold(cwd: string, cmd: 'qemu-io' | 'qimg', args: string[]): Promise<Holder> {
  const p = cmd === 'qimg' ? spawn(process.execPath, [qimgMain(), 'io', ...args], { cwd }) : spawn('qemu-io', args, { cwd });
  let out = '';
  let errText = '';
  const exited = new Promise<void>((resolve) => p.on('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not answer: ${errText}`)), 30_000);
    p.stderr.on('data', (d: Buffer) => (errText += d.toString()));
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('read 512/512 bytes at offset 0')) {
        clearTimeout(timer);
        resolve({
          stop: async () => {
            p.stdin.end();
            await exited;
          },
        });
      }
    });
    p.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited (${code}) before holding the image: ${errText}`));
    });
    p.stdin.write('read 0 512\n');
  });
}

async function holding<T>(cwd: string, cmd: 'qemu-io' | 'qimg', args: string[], body: () => T | Promise<T>): Promise<T> {
  const h = await hold(cwd, cmd, args);
  try {
    return await body();
  } finally {
    await h.stop();
  }
}

/** qimg's result must be qemu's, with the program name swapped. */
function sameAs(ours: RunResult, theirs: RunResult, prog: 'qemu-img' | 'qemu-io'): void {
  assert.equal(ours.stderr.replaceAll('qimg: ', `${prog}: `), theirs.stderr);
  assert.equal(ours.status, theirs.status);
}

function images(): { dir: string; bytes: (name: string) => Buffer } {
  const dir = tmpDir('qimg-locks-');
  for (const args of [
    ['create', '-q', '-f', 'qcow2', 'base.qcow2', '1M'],
    ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'],
    ['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M'],
    ['create', '-q', '-f', 'qcow2', 'src.qcow2', '1M'],
  ]) {
    assert.equal(qemuImg(args, { cwd: dir }).status, 0, args.join(' '));
  }
  assert.equal(qemuIo(['-c', 'write -P 0x5a 0 128k', 'src.qcow2'], { cwd: dir }).status, 0);
  assert.equal(qemuIo(['-c', 'write -P 0x33 0 64k', 'img.qcow2'], { cwd: dir }).status, 0);
  return { dir, bytes: (name) => readFileSync(join(dir, name)) };
}

test('while qemu-io has an image open for writing, qimg refuses to write it, as qemu does, and leaves it alone', async (t) => {
  if (!ready(t)) return;
  const { dir, bytes } = images();
  const cwd = { cwd: dir };
  const before = bytes('img.qcow2');
  await holding(dir, 'qemu-io', ['-f', 'qcow2', 'img.qcow2'], () => {
    const io = qimg(['io', '-c', 'write 0 64k', 'img.qcow2'], cwd);
    assert.equal(io.stderr, "qimg: can't open device img.qcow2: Failed to get \"write\" lock\nIs another process using the image [img.qcow2]?\n");
    sameAs(io, qemuIo(['-c', 'write 0 64k', 'img.qcow2'], cwd), 'qemu-io');

    sameAs(qimg(['convert', '-n', 'src.qcow2', 'img.qcow2'], cwd), qemuImg(['convert', '-n', 'src.qcow2', 'img.qcow2'], cwd), 'qemu-img');
    // -U shares the sources only; the target of convert is still locked.
    sameAs(qimg(['convert', '-U', '-n', 'src.qcow2', 'img.qcow2'], cwd), qemuImg(['convert', '-U', '-n', 'src.qcow2', 'img.qcow2'], cwd), 'qemu-img');
    sameAs(qimg(['convert', '-O', 'qcow2', 'src.qcow2', 'img.qcow2'], cwd), qemuImg(['convert', '-O', 'qcow2', 'src.qcow2', 'img.qcow2'], cwd), 'qemu-img');
    sameAs(qimg(['create', '-q', '-f', 'qcow2', 'img.qcow2', '2M'], cwd), qemuImg(['create', '-q', '-f', 'qcow2', 'img.qcow2', '2M'], cwd), 'qemu-img');
    sameAs(qimg(['bench', '-w', '-c', '1', 'img.qcow2'], cwd), qemuImg(['bench', '-w', '-c', '1', 'img.qcow2'], cwd), 'qemu-img');
    sameAs(qimg(['check', '-r', 'all', 'img.qcow2'], cwd), qemuImg(['check', '-r', 'all', 'img.qcow2'], cwd), 'qemu-img');
    assert.ok(before.equals(bytes('img.qcow2')), 'the image changed');
  });
  assert.ok(before.equals(bytes('img.qcow2')), 'the image changed');
});

test('while qemu-io has an image open for writing, qimg reads it only with -U', async (t) => {
  if (!ready(t)) return;
  const { dir } = images();
  const cwd = { cwd: dir };
  await holding(dir, 'qemu-io', ['-f', 'qcow2', 'img.qcow2'], () => {
    const info = qimg(['info', 'img.qcow2'], cwd);
    assert.equal(info.stderr, 'qimg: Could not open \'img.qcow2\': Failed to get shared "write" lock\nIs another process using the image [img.qcow2]?\n');
    sameAs(info, qemuImg(['info', 'img.qcow2'], cwd), 'qemu-img');
    for (const args of [['map', 'img.qcow2'], ['check', 'img.qcow2'], ['compare', 'src.qcow2', 'img.qcow2'], ['measure', '-O', 'qcow2', 'img.qcow2']]) {
      sameAs(qimg(args, cwd), qemuImg(args, cwd), 'qemu-img');
    }
    sameAs(qimg(['io', '-r', '-c', 'read 0 512', 'img.qcow2'], cwd), qemuIo(['-r', '-c', 'read 0 512', 'img.qcow2'], cwd), 'qemu-io');

    const shared = qimg(['info', '-U', 'img.qcow2'], cwd);
    assert.equal(shared.status, 0, shared.stderr);
    assert.equal(shared.stdout, qemuImg(['info', '-U', 'img.qcow2'], cwd).stdout);
    for (const args of [['map', '-U', 'img.qcow2'], ['check', '-U', 'img.qcow2'], ['compare', '-U', 'src.qcow2', 'img.qcow2'], ['io', '-r', '-U', '-c', 'read -P 0x33 0 64k', 'img.qcow2']]) {
      const r = qimg(args, cwd);
      assert.ok(r.status === 0 || (args[0] === 'compare' && r.status === 1), `${args.join(' ')}: ${r.stderr}`);
    }
  });
});

test('-U with a writable open is refused, as qemu refuses it', (t) => {
  if (!ready(t)) return;
  const { dir, bytes } = images();
  const cwd = { cwd: dir };
  const before = bytes('img.qcow2');
  sameAs(qimg(['io', '-U', '-c', 'write 0 512', 'img.qcow2'], cwd), qemuIo(['-U', '-c', 'write 0 512', 'img.qcow2'], cwd), 'qemu-io');
  sameAs(qimg(['bench', '-U', '-w', '-c', '1', 'img.qcow2'], cwd), qemuImg(['bench', '-U', '-w', '-c', '1', 'img.qcow2'], cwd), 'qemu-img');
  sameAs(qimg(['check', '-U', '-r', 'all', 'img.qcow2'], cwd), qemuImg(['check', '-U', '-r', 'all', 'img.qcow2'], cwd), 'qemu-img');
  assert.ok(before.equals(bytes('img.qcow2')), 'the image changed');
});

test('while qimg io has an image open for writing, qemu-img and qemu-io are refused', async (t) => {
  if (!ready(t)) return;
  const { dir, bytes } = images();
  const cwd = { cwd: dir };
  await holding(dir, 'qimg', ['-f', 'qcow2', 'img.qcow2'], () => {
    const info = qemuImg(['info', 'img.qcow2'], cwd);
    assert.equal(info.status, 1);
    assert.equal(info.stderr, 'qemu-img: Could not open \'img.qcow2\': Failed to get shared "write" lock\nIs another process using the image [img.qcow2]?\n');
    const before = bytes('img.qcow2');
    const write = qemuIo(['-c', 'write 0 512', 'img.qcow2'], cwd);
    assert.equal(write.status, 1);
    assert.equal(write.stderr, "qemu-io: can't open device img.qcow2: Failed to get \"write\" lock\nIs another process using the image [img.qcow2]?\n");
    assert.ok(before.equals(bytes('img.qcow2')), 'qemu-io changed the image');
    const shared = qemuImg(['info', '-U', 'img.qcow2'], cwd);
    assert.equal(shared.status, 0, shared.stderr);
  });
  // Released on exit: qemu can open it again.
  assert.equal(qemuIo(['-c', 'write 0 512', 'img.qcow2'], cwd).status, 0);
});

test('a second qimg writer is refused while the first holds the image', async (t) => {
  if (!ready(t)) return;
  const { dir, bytes } = images();
  const cwd = { cwd: dir };
  await holding(dir, 'qimg', ['img.qcow2'], () => {
    const before = bytes('img.qcow2');
    const second = qimg(['io', '-c', 'write 0 512', 'img.qcow2'], cwd);
    assert.equal(second.status, 1);
    assert.equal(second.stderr, "qimg: can't open device img.qcow2: Failed to get \"write\" lock\nIs another process using the image [img.qcow2]?\n");
    const convert = qimg(['convert', '-n', 'src.qcow2', 'img.qcow2'], cwd);
    assert.equal(convert.status, 1);
    assert.ok(before.equals(bytes('img.qcow2')), 'the image changed');
  });
});

test('backing files are locked too: no way around a writer through the chain', async (t) => {
  if (!ready(t)) return;
  const { dir, bytes } = images();
  const cwd = { cwd: dir };
  // A running VM writes base.qcow2: opening an overlay on it must fail, as in qemu.
  await holding(dir, 'qemu-io', ['-f', 'qcow2', 'base.qcow2'], () => {
    const io = qimg(['io', '-c', 'read 0 512', 'top.qcow2'], cwd);
    assert.equal(io.stderr, "qimg: can't open device top.qcow2: Could not open backing file: Failed to get shared \"write\" lock\nIs another process using the image [base.qcow2]?\n");
    sameAs(io, qemuIo(['-c', 'read 0 512', 'top.qcow2'], cwd), 'qemu-io');
    for (const args of [['map', 'top.qcow2'], ['compare', 'top.qcow2', 'src.qcow2'], ['info', '--backing-chain', 'top.qcow2']]) {
      sameAs(qimg(args, cwd), qemuImg(args, cwd), 'qemu-img');
    }
  });
  // A running VM on the overlay reads base.qcow2: nobody may write it underneath.
  const before = bytes('base.qcow2');
  await holding(dir, 'qemu-io', ['-f', 'qcow2', 'top.qcow2'], () => {
    sameAs(qimg(['io', '-c', 'write 0 512', 'base.qcow2'], cwd), qemuIo(['-c', 'write 0 512', 'base.qcow2'], cwd), 'qemu-io');
    sameAs(qimg(['convert', '-n', 'src.qcow2', 'base.qcow2'], cwd), qemuImg(['convert', '-n', 'src.qcow2', 'base.qcow2'], cwd), 'qemu-img');
    // Creating an overlay on an image in use is the live snapshot case: allowed.
    const r = qimg(['create', '-q', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', 'snap.qcow2'], cwd);
    assert.equal(r.status, 0, r.stderr);
  });
  assert.ok(before.equals(bytes('base.qcow2')), 'the backing file changed');
});
