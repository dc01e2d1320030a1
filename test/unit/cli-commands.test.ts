/**
 * qimg against qemu-img/qemu-io 7.2 on the same files: same stdout, same
 * stderr (program name aside), same exit code.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, statSync, writeFileSync, truncateSync as truncateFile, existsSync } from 'node:fs';
import { join } from 'node:path';
import { maskActualSize, maskDiskSize, maskIoTiming } from '../helpers/normalise.js';
import { qimgMain, REPO_ROOT } from '../helpers/cli.js';
import { asQemu, haveTools, qemuImg, qemuIo, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';

const dir = tmpDir('qimg-cli-');
/** A sparse file of `size` bytes (created if missing). */
const truncateSync = (path: string, size: number): void => {
  if (!existsSync(path)) writeFileSync(path, '');
  truncateFile(path, size);
};
const opts = { cwd: dir, env: { TZ: 'UTC' } };

/** Disk usage depends on the host file system, not on qimg (see normalise.ts). */
const noDiskSize = (s: string): string => maskDiskSize(maskActualSize(s));
const noTiming = maskIoTiming;

function same(args: string[], a: RunResult, b: RunResult, norm: (s: string) => string = (s) => s, prog = 'qemu-img'): void {
  assert.equal(norm(b.stdout), norm(a.stdout), `stdout of ${args.join(' ')}`);
  assert.equal(asQemu(b.stderr, prog), a.stderr, `stderr of ${args.join(' ')}`);
  assert.equal(b.status, a.status, `exit code of ${args.join(' ')}`);
}

const checkImg = (args: string[], norm?: (s: string) => string): void => same(args, qemuImg(args, opts), qimg(args, opts), norm);
const checkIo = (args: string[]): void => same(args, qemuIo(args, opts), qimg(['io', ...args], opts), noTiming, 'qemu-io');

const sh = (args: string[]): void => {
  const r = qemuImg(args, opts);
  assert.equal(r.status, 0, r.stderr);
};
const io = (file: string, ...cmds: string[]): void => {
  const r = qemuIo([...cmds.flatMap((c) => ['-c', c]), file], opts);
  assert.equal(r.status, 0, r.stderr);
};

test('the compiled CLI (the package bin) starts with a node shebang', () => {
  assert.match(readFileSync(qimgMain(), 'utf8'), /^#!\/usr\/bin\/env node\n/);
});

test('global options and unknown commands', () => {
  const v = qimg(['--version']);
  assert.equal(v.status, 0);
  const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  assert.equal(v.stdout, `qimg version ${pkg.version}\n`);
  assert.equal(qimg(['-V']).stdout, v.stdout);
  const h = qimg(['--help']);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /info \[--object objectdef\] \[--image-opts\] \[-f fmt\]/);
  for (const c of ['info', 'map', 'convert', 'compare', 'io', 'resize', 'snapshot', 'bitmap', 'rebase', 'dd', 'commit', 'amend']) {
    const r = qimg([c, '--help']);
    assert.equal(r.status, 0, c);
    assert.match(r.stdout, /^usage: qimg /, c);
  }
  const bad = qimg(['frob']);
  assert.equal(bad.status, 1);
  assert.equal(bad.stderr, "qimg: Command not found: frob\nTry 'qimg --help' for more information\n");
  assert.equal(bad.stdout, '');
});

test('no stack traces, unless QIMG_DEBUG=1', () => {
  const r = qimg(['info', join(dir, 'does-not-exist')]);
  assert.equal(r.stderr.split('\n').length, 2);
  const d = qimg(['info', join(dir, 'does-not-exist')], { env: { QIMG_DEBUG: '1' } });
  assert.match(d.stderr, /\n\s+at /);
});

describe('against qemu-img 7.2', () => {
  let ok = false;
  before(() => {
    ok = haveTools();
    if (!ok) {
      if (process.env.CI) throw new Error('qemu-img/qemu-io are required when CI is set');
      return;
    }
    // raw: data, a hole, data at an odd place, a non-sector-aligned size
    const raw = new Uint8Array(1024 * 1024);
    raw.set(new TextEncoder().encode('Hello, world!\x01\x02\x7f\x80 abcdefghijklmnopqrstuvwxyz'), 0);
    for (let i = 0; i < 12288; i++) raw[40960 + i] = (i * 7) & 0xff;
    writeFileSync(join(dir, 's.raw'), raw);
    truncateSync(join(dir, 'a.raw'), 1024 * 1024);
    writeFileSync(join(dir, 'b.raw'), new Uint8Array(1024 * 1024));
    writeFileSync(join(dir, 'odd.raw'), new Uint8Array(1000).fill(3));
    const big = new Uint8Array(2 * 1024 * 1024);
    big[1500000] = 0x79;
    writeFileSync(join(dir, 'big.raw'), big);
    truncateSync(join(dir, 'big0.raw'), 2 * 1024 * 1024);
    const diff = new Uint8Array(1024 * 1024);
    diff[70000] = 0x78;
    writeFileSync(join(dir, 'diff.raw'), diff);
    truncateSync(join(dir, 'small.raw'), 4096);

    sh(['create', '-q', '-f', 'qcow2', 't.qcow2', '1G']);
    io('t.qcow2', 'write -P 1 0 64k', 'write -z 1M 64k', 'write -P 2 2M 4k');
    sh(['create', '-q', '-f', 'qcow2', '-b', 't.qcow2', '-F', 'qcow2', 'o.qcow2']);
    io('o.qcow2', 'write -P 3 64k 64k');
    sh(['snapshot', '-c', 's1', 'o.qcow2']);
    sh(['bitmap', '--add', 'o.qcow2', 'b0']);
    sh(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '64M']);
    sh(['create', '-q', '-f', 'qed', 'q.qed', '1G']);
    io('q.qed', 'write -P 5 128k 64k');
    sh(['create', '-q', '-f', 'qed', '-b', 'q.qed', '-F', 'qed', 'q2.qed']);
    sh(['convert', '-c', '-O', 'qcow2', 's.raw', 'c.qcow2']);
  });
  const need = (t: { skip(m?: string): void }): boolean => ok || requireTools(t);

  test('info: JSON and human output, single images and chains', (t) => {
    if (!need(t)) return;
    for (const f of ['s.raw', 'odd.raw', 't.qcow2', 'o.qcow2', 'v2.qcow2', 'q.qed', 'q2.qed', 'c.qcow2']) {
      checkImg(['info', f], noDiskSize);
      checkImg(['info', '--output=json', f], noDiskSize);
    }
    checkImg(['info', '--backing-chain', 'o.qcow2'], noDiskSize);
    checkImg(['info', '--backing-chain', '--output', 'json', 'q2.qed'], noDiskSize);
    checkImg(['info', '-f', 'raw', '--output=json', 't.qcow2'], noDiskSize);
    checkImg(['info', join(dir, 'o.qcow2')], noDiskSize);
  });

  test('info: errors', (t) => {
    if (!need(t)) return;
    checkImg(['info', 'nope.qcow2']);
    checkImg(['info']);
    checkImg(['info', 'a', 'b']);
    checkImg(['info', '--output=xml', 's.raw']);
    checkImg(['info', '-f', 'qcow2', 's.raw']);
    checkImg(['info', '--bogus', 's.raw']);
    checkImg(['info', '-z', 's.raw']);
    checkImg(['info', '-f']);
  });

  test('map: JSON and human output', (t) => {
    if (!need(t)) return;
    for (const f of ['s.raw', 'a.raw', 'odd.raw', 't.qcow2', 'o.qcow2', 'v2.qcow2', 'q.qed', 'q2.qed', 'c.qcow2']) {
      checkImg(['map', '--output=json', f]);
      const a = qemuImg(['map', f], opts);
      const b = qimg(['map', f], opts);
      same(['map', f], a, b);
    }
    checkImg(['map', '--output=json', '--start-offset=1000', '--max-length=3M', 'o.qcow2']);
    checkImg(['map', '--output=json', '-s', '2G', 't.qcow2']);
    checkImg(['map', '-f', 'raw', '--output=json', 't.qcow2']);
    checkImg(['map', '--start-offset=abc', 's.raw']);
    checkImg(['map', '--max-length=-1', 's.raw']);
    checkImg(['map', 'nope']);
  });

  test('compare: messages and exit codes', (t) => {
    if (!need(t)) return;
    const cases = [
      ['a.raw', 'b.raw'],
      ['a.raw', 'diff.raw'],
      ['-s', 'a.raw', 'b.raw'],
      ['a.raw', 'big.raw'],
      ['a.raw', 'big0.raw'],
      ['-s', 'a.raw', 'big0.raw'],
      ['a.raw', 's.raw'],
      ['-q', 'a.raw', 'diff.raw'],
      ['-p', 'a.raw', 'b.raw'],
      ['-p', 'a.raw', 'diff.raw'],
      ['-p', 'big.raw', 'big0.raw'],
      ['nope', 'a.raw'],
      ['a.raw', 'nope'],
      ['a.raw'],
      ['-T', 'bad', 'a.raw', 'a.raw'],
      ['-f', 'qcow2', 'a.raw', 'a.raw'],
      ['t.qcow2', 'o.qcow2'],
      ['o.qcow2', 't.qcow2'],
      ['-s', 't.qcow2', 'o.qcow2'],
      ['q.qed', 'q2.qed'],
      ['c.qcow2', 's.raw'],
      ['-F', 'raw', 's.raw', 'c.qcow2'],
    ];
    for (const c of cases) checkImg(['compare', ...c]);
  });

  test('convert: identical to the source and sparse', (t) => {
    if (!need(t)) return;
    for (const src of [['s.raw'], ['o.qcow2'], ['q2.qed'], ['c.qcow2'], ['s.raw', 'odd.raw', 'big.raw']]) {
      const out = `conv-${src.length}-${src[0]}.raw`;
      const r = qimg(['convert', '-O', 'raw', ...src, out], opts);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, '');
      const ref = `ref-${src.length}-${src[0]}.raw`;
      sh(['convert', '-O', 'raw', ...src, ref]);
      assert.deepEqual(readFileSync(join(dir, out)), readFileSync(join(dir, ref)), `${src.join('+')} converted`);
      if (src.length === 1) {
        const cmp = qemuImg(['compare', src[0]!, out], opts);
        assert.equal(cmp.status, 0, cmp.stdout);
      }
      // never more allocated than qemu-img's own output (+4 KiB qemu-img allocates up front)
      assert.ok(statSync(join(dir, out)).blocks <= statSync(join(dir, ref)).blocks + 8, `${out} is sparse`);
    }
    // a 1 GiB image with 3 clusters of data converts to a file with (almost) nothing allocated
    assert.ok(statSync(join(dir, 'conv-1-o.qcow2.raw')).blocks * 512 < 1024 * 1024);
  });

  test('convert: options, progress, -n and errors', (t) => {
    if (!need(t)) return;
    const p = qimg(['convert', '-p', '-O', 'raw', 'o.qcow2', 'prog.raw'], opts);
    const pq = qemuImg(['convert', '-p', '-O', 'raw', 'o.qcow2', 'prog-ref.raw'], opts);
    assert.equal(p.stdout, pq.stdout);
    assert.equal(p.status, 0);
    checkImg(['convert', '-q', '-p', 's.raw', 'x1.raw']);
    checkImg(['convert', '-S', '0', '-m', '1', '-W', '-U', '-t', 'none', '-T', 'writeback', 's.raw', 'x2.raw']);
    assert.ok(statSync(join(dir, 'x2.raw')).blocks * 512 >= 1024 * 1024, '-S 0 allocates fully');
    writeFileSync(join(dir, 'junk-i.raw'), new Uint8Array(3 * 1024 * 1024).fill(0xee));
    writeFileSync(join(dir, 'junk-q.raw'), new Uint8Array(3 * 1024 * 1024).fill(0xee));
    assert.equal(qimg(['convert', '-n', 's.raw', 'junk-i.raw'], opts).status, 0);
    sh(['convert', '-n', 's.raw', 'junk-q.raw']);
    assert.deepEqual(readFileSync(join(dir, 'junk-i.raw')), readFileSync(join(dir, 'junk-q.raw')));
    for (const c of [
      ['-n', 's.raw', 'small.raw'],
      ['-O', 'foo', 's.raw', 'x3'],
      ['s.raw'],
      [],
      ['-S', '100', 's.raw', 'x4.raw'],
      ['-m', '0', 's.raw', 'x4.raw'],
      ['-m', '17', 's.raw', 'x4.raw'],
      ['-t', 'bad', 's.raw', 'x4.raw'],
      ['-T', 'bad', 's.raw', 'x4.raw'],
      ['nope', 'x4.raw'],
      ['-c', 's.raw', 'x4.raw'],
      ['s.raw', 'nodir/x.raw'],
      ['--target-is-zero', 's.raw', 'x4.raw'],
    ]) {
      checkImg(['convert', ...c]);
    }
    const q = qimg(['convert', '-O', 'qcow2', 's.raw', 'x5.qcow2'], opts);
    assert.equal(q.status, 0, q.stderr);
    assert.equal(qemuImg(['compare', 's.raw', 'x5.qcow2'], opts).status, 0);
  });

  test('io: read -P / -v, map, alloc, length, info as qemu-io prints them', (t) => {
    if (!need(t)) return;
    checkIo(['-r', '-c', 'read -v 0 48', '-c', 'read -P 0 4k 512', '-c', 'read -P 1 0 512', '-c', 'read -q 0 512', '-c', 'length', '-c', 'info', '-c', 'map', '-c', 'alloc 0 4k', '-c', 'alloc 0', 's.raw']);
    checkIo(['-r', '-c', 'read 1M 512', '-c', 'read 0 1x', '-c', 'read abc 1', '-c', 'read -P 300 0 1', '-c', 'alloc 2M', '-c', 'read 0 0', '-c', 'read 1 3', 's.raw']);
    checkIo(['-r', '-c', 'read -l 10 -s 5 -P 0 0 512', '-c', 'read -P 0x48 0 1', '-c', 'read 0 1.5k', '-c', 'read -v 0 20', '-c', 'read -v -q 0 20', '-c', 'read -P 72 -v 0 1', 's.raw']);
    for (const f of ['o.qcow2', 't.qcow2', 'q2.qed', 'c.qcow2', 'v2.qcow2']) {
      checkIo(['-r', '-c', 'map', '-c', 'alloc 0 128k', '-c', 'alloc 64k 1M', '-c', 'info', '-c', 'length', '-c', 'read -P 3 64k 64k', '-c', 'read -P 1 0 64k', '-c', 'read -v 2M 32', f]);
    }
    checkIo(['-c', 'length', 'nonexist.raw']);
    checkIo(['-f', 'qcow2', '-c', 'length', 's.raw']);
    // errors go to stderr, usage to stdout; compare each stream on its own
    for (const c of ['read', 'bogus', 'read -x 0 1', 'read 0 1 2', 'alloc', 'map x', 'length x']) checkIo(['-r', '-c', c, 's.raw']);
  });

  test('encrypted qcow2 (LUKS and AES) without a key: info works, every other command fails at open as in qemu-img', (t) => {
    if (!need(t)) return;
    for (const [name, o] of [['luks.qcow2', 'encrypt.format=luks,encrypt.iter-time=10'], ['aes.qcow2', 'encrypt.format=aes,compat=0.10']] as const) {
      sh(['create', '-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=abc', '-o', `${o},encrypt.key-secret=s0`, name, '1M']);
      checkImg(['info', '--output=json', name], noDiskSize);
      checkImg(['info', name], noDiskSize);
      for (const args of [['map', '--output=json'], ['map'], ['check', '--output=json'], ['check'], ['measure', '-O', 'qcow2'], ['compare', 's.raw']]) checkImg([...args, name]);
      checkImg(['compare', name, 's.raw']);
      checkImg(['convert', '-O', 'raw', name, `${name}.raw`]);
      same(['io'], qemuIo(['-c', 'read 0 512', name], opts), qimg(['io', '-c', 'read 0 512', name], opts), noTiming, 'qemu-io');
    }
  });

  test('check: a backing or data file that cannot be opened fails the check; -r on a probed raw image warns first', (t) => {
    if (!need(t)) return;
    sh(['create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', 'nobacking.qcow2', '1M']);
    sh(['create', '-q', '-f', 'qed', '-u', '-b', 'gone.raw', '-F', 'raw', 'nobacking.qed', '1M']);
    sh(['create', '-q', '-f', 'qcow2', '-o', 'data_file=nodata.data', 'nodata.qcow2', '1M']);
    io('nodata.qcow2', 'write -P 7 0 64k');
    rmSync(join(dir, 'nodata.data'));
    for (const f of ['nobacking.qcow2', 'nobacking.qed', 'nodata.qcow2']) {
      checkImg(['check', f]);
      checkImg(['check', '--output=json', f]);
    }
    for (const args of [['-r', 'all'], ['-r', 'leaks', '--output=json'], ['-r', 'all', '-f', 'raw'], []]) checkImg(['check', ...args, 's.raw']);
  });
});
