/**
 * Encrypted images end to end against qemu-img and qemu-io: qcow2 with LUKS
 * and with legacy AES, and raw LUKS volumes, made by either tool, written by
 * either, read by the other. Guest contents are compared through the key
 * (convert, compare); info, map and check outputs byte for byte; and the
 * files themselves are searched for the plaintext qimg wrote.
 * iter-time=10 throughout: key derivation is not under test here.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inflateRawSync, constants as zlibConstants } from 'node:zlib';
import { test } from 'node:test';
import { openImageFile } from '../../src/node.js';
import type { BlockImage } from '../../src/block/image.js';
import { isImageError } from '../../src/errors.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';

/** Two secrets: `s` for images, `b` for encrypted backing files; `x` is wrong for both. */
const SECRETS = ['--object', 'secret,id=s,data=pw', '--object', 'secret,id=b,data=bpw', '--object', 'secret,id=x,data=wrong'];
const LUKS = 'encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10';

interface Spec {
  alg: string;
  mode: string;
  ivgen: string;
  ivgenHash?: string;
  hash: string;
}

// 192-bit keys only with XTS: qemu 7.2 asserts creating them in other modes.
const MATRIX: Spec[] = [
  { alg: 'aes-128', mode: 'xts', ivgen: 'plain64', hash: 'sha256' },
  { alg: 'aes-256', mode: 'cbc', ivgen: 'essiv', ivgenHash: 'sha256', hash: 'sha1' },
  { alg: 'aes-192', mode: 'xts', ivgen: 'plain', hash: 'sha512' },
  { alg: 'aes-256', mode: 'ctr', ivgen: 'plain64', hash: 'sha256' },
  { alg: 'aes-128', mode: 'ecb', ivgen: 'plain64', hash: 'sha1' },
  { alg: 'serpent-128', mode: 'xts', ivgen: 'plain64', hash: 'sha256' },
  { alg: 'twofish-256', mode: 'cbc', ivgen: 'essiv', ivgenHash: 'sha256', hash: 'sha512' },
];

const specOptions = (s: Spec, prefix = 'encrypt.'): string =>
  [`${prefix}cipher-alg=${s.alg}`, `${prefix}cipher-mode=${s.mode}`, `${prefix}ivgen-alg=${s.ivgen}`, s.ivgenHash && `${prefix}ivgen-hash-alg=${s.ivgenHash}`, `${prefix}hash-alg=${s.hash}`]
    .filter(Boolean)
    .join(',');
const label = (s: Spec): string => `${s.alg}-${s.mode}-${s.ivgen}${s.ivgenHash ? `:${s.ivgenHash}` : ''}/${s.hash}`;

/** qemu's --image-opts text for an encrypted qcow2 (and its encrypted backing file). */
const qcow2Opts = (file: string, secret = 's', backingSecret?: string): string =>
  `driver=qcow2,file.filename=${file},encrypt.key-secret=${secret}${backingSecret ? `,backing.encrypt.key-secret=${backingSecret}` : ''}`;
const luksOpts = (file: string, secret = 's'): string => `driver=luks,file.filename=${file},key-secret=${secret}`;

/**
 * qemu-img create with a LUKS key slot: qemu's PBKDF2 calibration sometimes
 * fails on a loaded host ("Unable to get accurate CPU usage"); tried again then.
 */
function qemuCreate(args: readonly string[]): RunResult {
  let r = qemuImg(args);
  for (let i = 0; i < 3 && r.status !== 0 && r.stderr.includes('Unable to get accurate CPU usage'); i++) r = qemuImg(args);
  return r;
}

function ok(r: RunResult, what: string): RunResult {
  assert.equal(r.status, 0, `${what}: ${r.stderr}`);
  return r;
}

/** The same qemu-io command list, by qemu-io and by qimg io, over --image-opts. */
const ioArgs = (cmds: readonly string[], opts: string): string[] => [...SECRETS, '--image-opts', ...cmds.flatMap((c) => ['-c', c]), opts];

/** Guest contents through the key, as qemu-img convert gives them. */
function guest(opts: string, dir: string, name: string): Buffer {
  const out = join(dir, `${name}.guest.raw`);
  ok(qemuImg(['convert', ...SECRETS, '--image-opts', opts, '-O', 'raw', out], { cwd: dir }), `qemu-img convert ${name}`);
  return readFileSync(out);
}

/** Writes that cover the cases: partial sectors, zero writes, discard, across clusters (4 KiB). */
const FILL = [
  'write -P 0x11 100 3000',
  'write -P 0x22 4000 10000',
  'write -z 8k 8k',
  'write -z -u 20k 4k',
  'discard 12k 4k',
  'write -P 0x33 65000 1100',
  'write -P 0x44 1048064 512',
];

/** The ones qimg io runs next to qemu-io (on twin copies). */
const SEQUENCE = [
  'write -P 0x55 1 1',
  'write -P 0x56 511 2',
  'write -P 0x57 4095 4098',
  'write -z 6000 5000',
  'write -z -u 16k 8k',
  'discard 40k 12k',
  'write -P 0x58 44k 1000',
  'write -P 0x59 1047876 700',
];

/** JSON with the fields that differ per run removed: actual-size, uuid, iteration counts. */
function stable(json: string): unknown {
  return JSON.parse(json, (k, v) => (['actual-size', 'uuid', 'iters', 'master-key-iters'].includes(k) ? undefined : v));
}

test('qcow2 LUKS made by qemu: convert, info, map, check as qemu-img, and nothing without the key', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const base = join(dir, 'base.raw');
  ok(qemuImg(['create', '-q', '-f', 'raw', base, '1M']), 'base');
  ok(qemuIo(['-f', 'raw', '-c', 'write -P 0x66 0 1M', base]), 'base fill');
  for (const [i, spec] of MATRIX.entries()) {
    const img = join(dir, `q${i}.qcow2`);
    // Every other image has a plain backing file, so unallocated reads fall through it.
    const backing = i % 2 === 0 ? ['-b', base, '-F', 'raw'] : [];
    ok(qemuCreate(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', `${LUKS},cluster_size=4096,${specOptions(spec)}`, ...backing, img, '1M']), label(spec));
    ok(qemuIo(ioArgs(FILL, qcow2Opts(img))), `${label(spec)} fill`);
    const opts = qcow2Opts(img);
    const qOut = join(dir, `q${i}.q.raw`);
    const mOut = join(dir, `q${i}.m.raw`);
    ok(qemuImg(['convert', ...SECRETS, '--image-opts', opts, '-O', 'raw', qOut]), 'qemu-img convert');
    ok(qimg(['convert', ...SECRETS, '--image-opts', opts, '-O', 'raw', mOut]), `${label(spec)} qimg convert`);
    assert.ok(readFileSync(qOut).equals(readFileSync(mOut)), `${label(spec)}: guest contents`);
    // The outputs that depend on the cipher for every image; the rest (the same code whatever the cipher) for two.
    const full = i < 2;
    for (const args of [
      ['info', '--output=json', ...SECRETS, '--image-opts', opts],
      ['map', '--output=json', ...SECRETS, '--image-opts', opts],
      ...(full ? [['info', '--output=json', img], ['info', img], ['check', ...SECRETS, '--image-opts', opts], ['check', '--output=json', ...SECRETS, '--image-opts', opts]] : []),
    ]) {
      const q = qemuImg(args);
      const m = qimg(args);
      assert.equal(m.status, q.status, `${label(spec)} ${args[0]}: exit code`);
      const [qs, ms] = [q.stdout, m.stdout].map((s) => s.replace(/disk size: .*\n/, '').replace(/"actual-size": \d+/, ''));
      assert.equal(ms, qs, `${label(spec)} ${args.join(' ')}`);
    }
    if (!full) continue;
    // Encrypted data has no host offset to show (the plain backing file's has).
    const own = (JSON.parse(qimg(['map', '--output=json', ...SECRETS, '--image-opts', opts]).stdout) as { depth: number; offset?: number }[]).filter((e) => e.depth === 0);
    assert.ok(own.length > 0 && own.every((e) => e.offset === undefined));
    // Without the key: every data command fails as qemu's does.
    for (const args of [
      ['convert', '-O', 'raw', img, join(dir, 'nokey.raw')],
      ['map', img],
      ['check', img],
      ['compare', img, img],
      ['convert', ...SECRETS, '--image-opts', qcow2Opts(img, 'x'), '-O', 'raw', join(dir, 'wrong.raw')],
    ]) {
      const q = qemuImg(args);
      const m = qimg(args);
      assert.notEqual(m.status, 0, args.join(' '));
      assert.equal(m.status, q.status, `${args.join(' ')}: exit code`);
      assert.equal(asQemu(m.stderr), q.stderr, args.join(' '));
      assert.equal(m.stdout, '', args.join(' '));
    }
    assert.ok(!existsSync(join(dir, 'nokey.raw')) && !existsSync(join(dir, 'wrong.raw')), 'no output left behind');
    const io = qimg(['io', '-c', 'read 0 4k', img]);
    const qio = qemuIo(['-c', 'read 0 4k', img]);
    assert.equal(io.status, qio.status);
    assert.equal(asQemu(io.stderr, 'qemu-io'), qio.stderr);
  }
});

test('qcow2 LUKS made by qimg create: qemu reads what was written, checks it clean, shows the same encrypt block', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  for (const [i, spec] of MATRIX.entries()) {
    const o = `${LUKS},cluster_size=4096,${specOptions(spec)}`;
    const mine = join(dir, `m${i}.qcow2`);
    const theirs = join(dir, `q${i}.qcow2`);
    const plain = join(dir, `p${i}.qcow2`);
    ok(qimg(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', o, mine, '1M']), `${label(spec)} qimg create`);
    ok(qemuCreate(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', o, theirs, '1M']), 'qemu-img create');
    ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', plain, '1M']), 'plain');
    ok(qemuIo(ioArgs(FILL, qcow2Opts(mine))), `${label(spec)}: qemu-io writes into qimg's image`);
    ok(qemuIo(['-f', 'qcow2', ...FILL.flatMap((c) => ['-c', c]), plain]), 'plain fill');
    const cmp = qemuImg(['compare', ...SECRETS, '--image-opts', qcow2Opts(mine), `driver=qcow2,file.filename=${plain}`]);
    assert.equal(cmp.stdout, 'Images are identical.\n', `${label(spec)}: ${cmp.stderr}`);
    ok(qemuImg(['check', ...SECRETS, '--image-opts', qcow2Opts(mine)]), `${label(spec)} check`);
    const encryptOf = (f: string): unknown => (stable(ok(qemuImg(['info', '--output=json', f]), 'info').stdout) as { 'format-specific': { data: { encrypt: unknown } } })['format-specific'].data.encrypt;
    assert.deepEqual(encryptOf(mine), encryptOf(theirs), `${label(spec)}: encrypt block`);
  }
});

test('qimg io on qcow2 LUKS, legacy AES and raw LUKS: same guest contents as qemu-io on a twin', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const [a, b] = [join(dir, 'a'), join(dir, 'b')];
  mkdirSync(a);
  mkdirSync(b);
  // An encrypted overlay over an encrypted backing file (its own secret), made by qemu.
  ok(qemuCreate(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', 'encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10,cluster_size=4096', join(a, 'base.qcow2'), '1M']), 'base');
  ok(qemuIo([...SECRETS, '--image-opts', '-c', 'write -P 0x77 0 1M', qcow2Opts(join(a, 'base.qcow2'), 'b')]), 'base fill');
  ok(qemuCreate(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', `${LUKS},cluster_size=4096`, '-b', 'base.qcow2', '-F', 'qcow2', join(a, 'top.qcow2')]), 'overlay');
  ok(qemuCreate(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', 'encrypt.format=aes,encrypt.key-secret=s,cluster_size=4096', join(a, 'aes.qcow2'), '1M']), 'aes');
  ok(qemuCreate(['create', '-q', '-f', 'luks', ...SECRETS, '-o', 'key-secret=s,iter-time=10,cipher-alg=twofish-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256', join(a, 'vol.luks'), '1M']), 'luks');
  ok(qemuCreate(['create', '-q', '-f', 'luks', ...SECRETS, '-o', 'key-secret=s,iter-time=10', join(a, 'xts.luks'), '1M']), 'luks xts');
  for (const f of ['base.qcow2', 'top.qcow2', 'aes.qcow2', 'vol.luks', 'xts.luks']) copyFileSync(join(a, f), join(b, f));
  const cases: [string, (d: string) => string][] = [
    ['overlay on an encrypted backing file', (d) => qcow2Opts(join(d, 'top.qcow2'), 's', 'b')],
    ['legacy AES', (d) => qcow2Opts(join(d, 'aes.qcow2'))],
    ['raw LUKS twofish-cbc-essiv', (d) => luksOpts(join(d, 'vol.luks'))],
    ['raw LUKS aes-xts', (d) => luksOpts(join(d, 'xts.luks'))],
  ];
  for (const [what, opts] of cases) {
    const q = ok(qemuIo(ioArgs(SEQUENCE, opts(a))), `qemu-io ${what}`);
    const m = ok(qimg(['io', ...ioArgs(SEQUENCE, opts(b))]), `qimg io ${what}`);
    const lines = (s: string): string[] => s.split('\n').filter((l) => !/ops\/sec/.test(l));
    assert.deepEqual(lines(m.stdout), lines(q.stdout), `${what}: qemu-io's report`);
    assert.ok(guest(opts(b), dir, 'b').equals(guest(opts(a), dir, 'a')), `${what}: guest contents`);
    // A raw LUKS volume's discarded or never-written sectors read as whatever the key makes of
    // the file's zeros: equal on twins only because both share one key. Compared by qimg too:
    const c = qimg(['compare', ...SECRETS, '--image-opts', opts(a), opts(b)]);
    assert.equal(c.stdout, 'Images are identical.\n', `${what}: ${c.stderr}`);
    if (what !== 'raw LUKS twofish-cbc-essiv' && what !== 'raw LUKS aes-xts') ok(qemuImg(['check', ...SECRETS, '--image-opts', opts(b)]), `${what}: check`);
  }
  // The backing file was only read.
  assert.ok(readFileSync(join(a, 'base.qcow2')).equals(readFileSync(join(b, 'base.qcow2'))));
});

/** Whether `file` holds `run` bytes of `byte` in a row anywhere. */
function holdsRun(file: string, byte: number, run = 64): boolean {
  return readFileSync(file).includes(Buffer.alloc(run, byte));
}
/** Whether `file` holds the text anywhere. */
const holdsText = (file: string, text: string): boolean => readFileSync(file).includes(Buffer.from(text));

test('on disk: no plaintext qimg writes reaches the image or its data file', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const SECRET_TEXT = 'PLAINTEXT-MUST-NOT-LEAK-';
  const src = join(dir, 'src.raw');
  writeFileSync(src, Buffer.from(SECRET_TEXT.repeat(Math.ceil((1 << 20) / SECRET_TEXT.length))).subarray(0, 1 << 20));
  assert.ok(holdsText(src, SECRET_TEXT));
  const targets: [string, string[], string][] = [
    ['qcow2 LUKS', ['-O', 'qcow2', '-o', `${LUKS},cluster_size=4096`], 'conv.qcow2'],
    ['qcow2 LUKS, external data file', ['-O', 'qcow2', '-o', `${LUKS},data_file=conv.data`], 'conv2.qcow2'],
    ['qcow2 AES', ['-O', 'qcow2', '-o', 'encrypt.format=aes,encrypt.key-secret=s'], 'conv.aes.qcow2'],
    ['raw LUKS', ['-O', 'luks', '-o', 'key-secret=s,iter-time=10'], 'conv.luks'],
  ];
  for (const [what, args, name] of targets) {
    ok(qimg(['convert', ...SECRETS, ...args, src, join(dir, name)], { cwd: dir }), `convert into ${what}`);
    for (const f of [name, 'conv.data']) if (existsSync(join(dir, f))) assert.ok(!holdsText(join(dir, f), SECRET_TEXT), `${what}: ${f} holds plaintext`);
  }
  // The guest is the source, as qemu reads it.
  const guestOf = (opts: string): Buffer => guest(opts, dir, 'conv');
  assert.ok(guestOf(qcow2Opts(join(dir, 'conv.qcow2'))).equals(readFileSync(src)), 'qcow2 LUKS guest');
  assert.ok(guestOf(qcow2Opts(join(dir, 'conv2.qcow2'))).equals(readFileSync(src)), 'data file guest');
  assert.ok(guestOf(qcow2Opts(join(dir, 'conv.aes.qcow2'))).equals(readFileSync(src)), 'AES guest');
  assert.ok(guestOf(luksOpts(join(dir, 'conv.luks'))).equals(readFileSync(src)), 'raw LUKS guest');
  // qimg io writes (a byte pattern) and preallocation=full (zeros) leave no plaintext either.
  const io = join(dir, 'io.qcow2');
  ok(qimg(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', `${LUKS},data_file=io.data,preallocation=full`, io, '1M'], { cwd: dir }), 'create full');
  ok(qimg(['io', ...ioArgs(['write -P 0xa5 0 300k', 'write -P 0xa5 700001 1234', 'write -z 400k 100k'], qcow2Opts(io))], { cwd: dir }), 'io');
  assert.ok(!holdsRun(join(dir, 'io.data'), 0xa5) && !holdsRun(io, 0xa5), 'pattern on disk');
  // Zeros included: a whole zero sector in the preallocated data file would be plaintext zeros.
  const data = readFileSync(join(dir, 'io.data'));
  for (let off = 0; off < data.length; off += 512) assert.ok(!data.subarray(off, off + 512).equals(Buffer.alloc(512)), `plain zero sector at ${off}`);
  ok(qemuIo([...SECRETS, '--image-opts', '-c', 'read -P 0xa5 0 300k', '-c', 'read -P 0 400k 100k', '-c', 'read -P 0 800k 224k', qcow2Opts(io)], { cwd: dir }), 'qemu reads it');
  const vol = join(dir, 'full.luks');
  ok(qimg(['create', '-q', '-f', 'luks', ...SECRETS, '-o', 'key-secret=s,iter-time=10,preallocation=full', vol, '256k']), 'luks full');
  const payload = readFileSync(vol).subarray(-256 * 1024);
  for (let off = 0; off < payload.length; off += 512) assert.ok(!payload.subarray(off, off + 512).equals(Buffer.alloc(512)), `luks zero sector at ${off}`);
  ok(qemuIo([...SECRETS, '--image-opts', '-c', 'read -P 0 0 256k', luksOpts(vol)]), 'qemu reads zeros');
});

test('legacy AES qcow2: qimg reads qemu-img\'s and writes as qemu-io does, both ways', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const o = 'encrypt.format=aes,encrypt.key-secret=s,cluster_size=4096';
  const q = join(dir, 'q.qcow2');
  const m = join(dir, 'm.qcow2');
  const qc = qemuCreate(['create', '-f', 'qcow2', ...SECRETS, '-o', o, q, '1M']);
  const mc = qimg(['create', '-f', 'qcow2', ...SECRETS, '-o', o, m, '1M']);
  assert.equal(mc.status, qc.status);
  assert.equal(mc.stdout.replace(m, q), qc.stdout, 'Formatting line');
  assert.equal(asQemu(mc.stderr), qc.stderr, 'warnings');
  // qemu-io fills qimg's image, qimg io fills qemu's: the same guest both ways.
  ok(qemuIo(ioArgs(FILL, qcow2Opts(m))), 'qemu-io into qimg');
  ok(qimg(['io', ...ioArgs(FILL, qcow2Opts(q))]), 'qimg io into qemu');
  assert.ok(guest(qcow2Opts(m), dir, 'm').equals(guest(qcow2Opts(q), dir, 'q')));
  for (const f of [q, m]) {
    ok(qemuImg(['check', ...SECRETS, '--image-opts', qcow2Opts(f)]), 'check');
    for (const args of [['info', '--output=json', ...SECRETS, '--image-opts', qcow2Opts(f)], ['map', '--output=json', ...SECRETS, '--image-opts', qcow2Opts(f)], ['info', f]]) {
      const [qr, mr] = [qemuImg(args), qimg(args)];
      assert.equal(mr.status, qr.status);
      assert.equal(mr.stdout.replace(/disk size: .*\n/, '').replace(/"actual-size": \d+/, ''), qr.stdout.replace(/disk size: .*\n/, '').replace(/"actual-size": \d+/, ''), args.join(' '));
    }
    const out = join(dir, 'aes.raw');
    ok(qimg(['convert', ...SECRETS, '--image-opts', qcow2Opts(f), '-O', 'raw', out]), 'qimg convert');
    assert.ok(readFileSync(out).equals(guest(qcow2Opts(f), dir, 'x')));
  }
});

test('raw LUKS: info, convert both ways, create, resize and check as qemu-img', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  // Twofish, not Serpent: every command here decrypts the whole volume, and qimg's Serpent is slow.
  const o = 'key-secret=s,iter-time=10,cipher-alg=twofish-256,cipher-mode=xts,hash-alg=sha1';
  const q = join(dir, 'q.luks');
  const m = join(dir, 'm.luks');
  const qc = qemuCreate(['create', '-f', 'luks', ...SECRETS, '-o', o, q, '1M']);
  const mc = qimg(['create', '-f', 'luks', ...SECRETS, '-o', o, m, '1M']);
  assert.equal(mc.stdout.replace(m, q), qc.stdout, 'Formatting line');
  assert.equal(mc.status, qc.status);
  // Each tool fills the other's volume; each reads both.
  ok(qemuIo(ioArgs(FILL, luksOpts(m))), 'qemu-io into qimg');
  ok(qimg(['io', ...ioArgs(FILL, luksOpts(q))]), 'qimg io into qemu');
  for (const f of [q, m]) {
    const out = join(dir, 'out.raw');
    ok(qimg(['convert', ...SECRETS, '--image-opts', luksOpts(f), '-O', 'raw', out]), 'qimg convert from luks');
    assert.ok(readFileSync(out).equals(guest(luksOpts(f), dir, 'g')), `${f}: guest`);
    for (const args of [
      ['info', '--output=json', ...SECRETS, '--image-opts', luksOpts(f)],
      ['info', f],
      ['info', '-f', 'luks', '--output=json', f],
      ['map', '--output=json', ...SECRETS, '--image-opts', luksOpts(f)],
      ['check', ...SECRETS, '--image-opts', luksOpts(f)],
      ['check', f],
      ['map', f],
      ['convert', '-O', 'raw', f, join(dir, 'nokey.raw')],
    ]) {
      const [qr, mr] = [qemuImg(args), qimg(args)];
      assert.equal(mr.status, qr.status, `${args.join(' ')}: exit code`);
      const norm = (s: string): string => s.replace(/disk size: .*\n/, '').replace(/"actual-size": \d+/, '');
      assert.equal(norm(mr.stdout), norm(qr.stdout), args.join(' '));
      assert.equal(asQemu(mr.stderr), qr.stderr, args.join(' '));
    }
    assert.ok(!existsSync(join(dir, 'nokey.raw')));
  }
  const layout = (f: string): unknown => stable(ok(qemuImg(['info', '--output=json', f]), 'info').stdout.replaceAll(f, 'F'));
  assert.deepEqual(layout(m), layout(q), 'qimg create: the header qemu-img writes');
  // Grow: by both tools, then written at the new end.
  const grow = (tool: typeof qimg, f: string): RunResult => tool(['resize', ...SECRETS, '--image-opts', luksOpts(f), '2M']);
  const [gq, gm] = [grow(qemuImg, q), grow(qimg, m)];
  assert.equal(gm.stdout, gq.stdout);
  assert.equal(gm.status, gq.status);
  const tail = ['write -P 0x99 1536k 4k', 'write -P 0x9a 2097052 100'];
  ok(qemuIo(ioArgs(tail, luksOpts(m))), 'qemu-io after grow');
  ok(qimg(['io', ...ioArgs(tail, luksOpts(q))]), 'qimg io after grow');
  for (const f of [q, m]) {
    ok(qemuIo(ioArgs(['read -P 0x99 1536k 4k', 'read -P 0x9a 2097052 100'], luksOpts(f))), `${f}: grown`);
    assert.equal(JSON.parse(ok(qimg(['info', '--output=json', ...SECRETS, '--image-opts', luksOpts(f)]), 'info').stdout)['virtual-size'], 2 << 20);
  }
  // Convert into a LUKS volume: the source's zeros are written (a new payload reads as noise).
  const src = join(dir, 'src.raw');
  ok(qemuImg(['create', '-q', '-f', 'raw', src, '1M']), 'src');
  ok(qemuIo(['-f', 'raw', '-c', 'write -P 0x12 64k 64k', src]), 'src fill');
  for (const [tool, name] of [[qemuImg, 'q2.luks'], [qimg, 'm2.luks']] as const) {
    ok((tool === qemuImg ? qemuCreate : tool)(['convert', ...SECRETS, '-O', 'luks', '-o', 'key-secret=s,iter-time=10', src, join(dir, name)]), `${name}`);
    assert.ok(guest(luksOpts(join(dir, name)), dir, name).equals(readFileSync(src)), `${name}: guest`);
  }
  // Target --target-image-opts into an existing volume.
  ok(qimg(['convert', '-n', ...SECRETS, '--target-image-opts', src, luksOpts(m)]), 'into existing');
  assert.ok(guest(luksOpts(m), dir, 'n').subarray(0, 1 << 20).equals(readFileSync(src)));
});

test('convert: encrypted to plain, plain to encrypted, encrypted to encrypted; refusals as qemu-img', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const src = join(dir, 'src.raw');
  ok(qemuImg(['create', '-q', '-f', 'raw', src, '1M']), 'src');
  ok(qemuIo(['-f', 'raw', '-c', 'write -P 0x21 0 100k', '-c', 'write -P 0x22 700k 3000', src]), 'src fill');
  const want = readFileSync(src);
  const enc = join(dir, 'enc.qcow2');
  ok(qimg(['convert', ...SECRETS, '-O', 'qcow2', '-o', LUKS, src, enc]), 'plain -> encrypted (-o)');
  assert.ok(guest(qcow2Opts(enc), dir, 'enc').equals(want));
  // Encrypted to encrypted (another key), then to plain.
  const enc2 = join(dir, 'enc2.qcow2');
  ok(qimg(['convert', ...SECRETS, '--image-opts', qcow2Opts(enc), '-O', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10,encrypt.cipher-alg=twofish-128', enc2]), 'enc -> enc');
  assert.ok(guest(qcow2Opts(enc2, 'b'), dir, 'enc2').equals(want));
  const plain = join(dir, 'plain.qcow2');
  ok(qimg(['convert', ...SECRETS, '--image-opts', qcow2Opts(enc2, 'b'), '-O', 'qcow2', plain]), 'enc -> plain');
  assert.equal(ok(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', src, plain]), 'compare').stdout, 'Images are identical.\n');
  // --target-image-opts into an existing encrypted image qemu made.
  const pre = join(dir, 'pre.qcow2');
  ok(qemuCreate(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', LUKS, pre, '1M']), 'pre');
  ok(qimg(['convert', '-n', ...SECRETS, '--target-image-opts', src, qcow2Opts(pre)]), '--target-image-opts');
  assert.ok(guest(qcow2Opts(pre), dir, 'pre').equals(want));
  // Refusals: messages and exit codes as qemu-img's, and no output file.
  const cases: [string, (out: string) => string[]][] = [
    ['-c with an encrypted target', (out) => ['convert', ...SECRETS, '-c', '-O', 'qcow2', '-o', LUKS, src, out]],
    ['-c with an AES target', (out) => ['convert', ...SECRETS, '-c', '-O', 'qcow2', '-o', 'encrypt.format=aes,encrypt.key-secret=s', src, out]],
    ['wrong secret', (out) => ['convert', ...SECRETS, '--image-opts', qcow2Opts(enc, 'x'), '-O', 'raw', out]],
    ['no secret', (out) => ['convert', '-O', 'raw', enc, out]],
    ['wrong target secret', () => ['convert', '-n', ...SECRETS, '--target-image-opts', src, qcow2Opts(pre, 'x')]],
    ['target without secret', () => ['convert', '-n', ...SECRETS, '--target-image-opts', src, `driver=qcow2,file.filename=${pre}`]],
    ['-c into an existing encrypted target', () => ['convert', '-n', '-c', ...SECRETS, '-O', 'qcow2', src, pre]],
  ];
  for (const [what, args] of cases) {
    const [qOut, mOut] = [join(dir, 'q.out'), join(dir, 'm.out')];
    const before = readFileSync(pre);
    const q = qemuImg(args(qOut));
    const m = qimg(args(mOut));
    assert.equal(q.status, 1, `${what}: qemu fails`);
    assert.equal(m.status, q.status, `${what}: exit code`);
    assert.equal(asQemu(m.stderr).replaceAll(mOut, qOut), q.stderr, what);
    assert.ok(!existsSync(mOut), `${what}: no output left`);
    assert.ok(readFileSync(pre).equals(before), `${what}: target untouched`);
  }
  assert.match(qemuImg(cases[0]![1](join(dir, 'c.out'))).stderr, /Compression and encryption not supported at the same time/);
  // -c into an existing encrypted image whose clusters hold data, with its key: compression cannot
  // overwrite, so qemu fails the first write with EIO, and qimg with the same words and code.
  const before = readFileSync(pre);
  const cArgs = ['convert', '-n', '-c', ...SECRETS, '--target-image-opts', src, qcow2Opts(pre)];
  const [qc, mc] = [qemuImg(cArgs), qimg(cArgs)];
  assert.equal(qc.stderr, 'qemu-img: error while writing at byte 0: Input/output error\n');
  assert.equal(mc.status, qc.status);
  assert.equal(asQemu(mc.stderr), qc.stderr);
  assert.ok(readFileSync(pre).equals(before) || guest(qcow2Opts(pre), dir, 'pre2').equals(want), 'no plaintext, guest unchanged');
  assert.ok(!readFileSync(pre).includes(Buffer.alloc(64, 0x21)), 'no plaintext in the file');
  // Into clusters that hold nothing, qemu writes the compressed plaintext and succeeds; qimg
  // refuses (a deliberate difference) and says why.
  const empty = join(dir, 'empty.qcow2');
  ok(qimg(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', LUKS, empty, '1M']), 'empty target');
  const empty2 = join(dir, 'empty2.qcow2');
  copyFileSync(empty, empty2);
  const eq = qemuImg(['convert', '-n', '-c', ...SECRETS, '--target-image-opts', src, qcow2Opts(empty)]);
  assert.equal(eq.status, 0, eq.stderr);
  const em = qimg(['convert', '-n', '-c', ...SECRETS, '--target-image-opts', src, qcow2Opts(empty2)]);
  assert.equal(em.status, 1);
  assert.equal(em.stderr, 'qimg: error while writing at byte 0: Compression and encryption not supported at the same time\n');
});

test('compressed clusters: qemu writes them unencrypted; qimg reads them and refuses to write them', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const img = join(dir, 'c.qcow2');
  ok(qemuCreate(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', `${LUKS},cluster_size=65536`, img, '1M']), 'create');
  ok(qemuIo(ioArgs(['write -c -P 0x61 0 64k'], qcow2Opts(img))), 'qemu-io write -c');
  // qemu 7.2 deflates the guest's cluster and stores the stream as is: the plaintext is one
  // inflate away in the file. Found by inflating at each sector boundary.
  const file = readFileSync(img);
  let leaked = -1;
  for (let off = 0; off < file.length && leaked < 0; off += 512) {
    try {
      const out = inflateRawSync(file.subarray(off, off + 65536), { finishFlush: zlibConstants.Z_SYNC_FLUSH });
      if (out.length >= 4096 && out.subarray(0, 4096).equals(Buffer.alloc(4096, 0x61))) leaked = off;
    } catch {
      // not a deflate stream here
    }
  }
  assert.ok(leaked > 0, 'qemu stores the compressed cluster unencrypted');
  // qimg reads such a cluster as qemu does (the data is the image's, however stored).
  ok(qimg(['io', ...ioArgs(['read -P 0x61 0 64k'], qcow2Opts(img))]), 'qimg reads it');
  // But never writes one: a compressed cluster would put plaintext into an encrypted image.
  const before = readFileSync(img);
  const w = qimg(['io', ...ioArgs(['write -c -P 0x62 64k 64k'], qcow2Opts(img))]);
  assert.match(w.stdout + w.stderr, /write failed: Operation not supported/);
  assert.ok(readFileSync(img).equals(before), 'image unchanged');
  const lib = await openImageFile(img, { writable: true, passphrase: 'pw' });
  try {
    await assert.rejects(lib.write(128 << 10, new Uint8Array(65536).fill(0x62), { compressed: true }), (e) => isImageError(e));
  } finally {
    await lib.close();
  }
  assert.ok(!readFileSync(img).includes(Buffer.alloc(4096, 0x62)));
});

test('library: passphrase and secrets open encrypted images; the gate holds without the key', async (t) => {
  if (!requireTools(t)) return;
  const dir = tmpDir();
  const q = join(dir, 'l.qcow2');
  const v = join(dir, 'l.luks');
  ok(qemuCreate(['create', '-q', '-f', 'qcow2', ...SECRETS, '-o', `${LUKS},cluster_size=4096`, q, '1M']), 'qcow2');
  ok(qemuCreate(['create', '-q', '-f', 'luks', ...SECRETS, '-o', 'key-secret=s,iter-time=10', v, '1M']), 'luks');
  const pattern = new Uint8Array(5000).fill(0xc3);
  const ways = [
    { passphrase: 'pw' },
    { secrets: { s: 'pw' }, blockOptions: { 'encrypt.key-secret': 's' } },
  ];
  for (const [path, format, keyOpt] of [[q, 'qcow2', 'encrypt.key-secret'], [v, 'luks', 'key-secret']] as const) {
    for (const [i, way] of ways.entries()) {
      const opts = 'blockOptions' in way ? { secrets: way.secrets, blockOptions: { [keyOpt]: 's' } } : way;
      const img = await openImageFile(path, { format, writable: true, ...opts });
      try {
        await img.write(1000 + i * 8192, pattern);
        await img.writeZeroes(100_000, 3000);
        const back = new Uint8Array(5000);
        await img.read(1000 + i * 8192, back);
        assert.deepEqual(back, pattern);
        // A mapping's storage is the cipher view: reading it gives plaintext, never the raw file's bytes.
        const driver = (img as BlockImage).driver;
        const map = await driver.getMapping(0, 4096);
        assert.equal(map.kind, 'data');
        if (map.kind === 'data') {
          const viaMap = new Uint8Array(4096);
          await map.storage.read(viaMap, map.hostOffset);
          const direct = new Uint8Array(4096);
          await img.read(0, direct);
          assert.deepEqual(viaMap, direct);
          // Unaligned writes straight into it are refused, aligned ones enciphered.
          await assert.rejects(map.storage.write(new Uint8Array(100).fill(0xc3), map.hostOffset + 1), (e) => isImageError(e, 'bad-argument'));
        }
      } finally {
        await img.close();
      }
      const rd = qemuIo(ioArgs([`read -P 0xc3 ${1000 + i * 8192} 5000`, 'read -P 0 100000 3000'], format === 'qcow2' ? qcow2Opts(path) : luksOpts(path)));
      assert.equal(rd.status, 0, rd.stderr);
      assert.doesNotMatch(rd.stdout, /Pattern verification failed/);
    }
    assert.ok(!readFileSync(path).includes(Buffer.from(pattern.subarray(0, 64))), `${format}: plaintext on disk`);
    // Without the key: no writable open, no data open; a metadata-only open reads and writes nothing.
    const before = readFileSync(path);
    for (const opts of [{ writable: true }, {}, { writable: true, passphrase: 'wrong' }, { writable: true, secrets: { s: 'pw' } }]) {
      await assert.rejects(openImageFile(path, { format, ...opts }), (e) => isImageError(e), JSON.stringify(opts));
    }
    const meta = await openImageFile(path, { format, metadataOnly: true });
    try {
      assert.equal((await meta.info()).encrypted, true);
      await assert.rejects(meta.write(0, new Uint8Array(512)), (e) => isImageError(e));
      await assert.rejects(meta.writeZeroes(0, 4096), (e) => isImageError(e));
      await assert.rejects(meta.read(0, new Uint8Array(512)), (e) => isImageError(e));
    } finally {
      await meta.close();
    }
    assert.ok(readFileSync(path).equals(before), `${format}: untouched without the key`);
  }
});
