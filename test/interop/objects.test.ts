/**
 * --object secret and --image-opts against qemu-img and qemu-io 7.2: the
 * same stdout, stderr and exit code for every case qimg handles as qemu
 * does; the refusals qimg makes on purpose (object types it cannot use,
 * data of encrypted images) checked for what they say; and no secret ever
 * printed, whatever fails.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImageFile } from '../../src/node.js';
import { ObjectStore } from '../../src/cli/objects.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';

const SECRET_DATA = 'pw-Very-Secret-42';

function fixtures(): string {
  const dir = tmpDir();
  const q = (args: string[]): void => {
    const r = qemuImg(args, { cwd: dir });
    assert.equal(r.status, 0, r.stderr);
  };
  q(['create', '-q', '-f', 'qcow2', 'x.qcow2', '1M']);
  q(['create', '-q', '-f', 'qcow2', '-b', 'x.qcow2', '-F', 'qcow2', 'o.qcow2']);
  q(['create', '-q', '-f', 'qcow2', '--object', `secret,id=s0,data=${SECRET_DATA}`, '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', 'e.qcow2', '1M']);
  q(['create', '-q', '-f', 'qcow2', '-b', 'e.qcow2', '-F', 'qcow2', 'oe.qcow2']);
  const io = qemuIo(['-c', 'write -P 0x5a 0 64k', 'x.qcow2'], { cwd: dir });
  assert.equal(io.status, 0, io.stderr);
  writeFileSync(join(dir, 'secret.txt'), SECRET_DATA);
  return dir;
}

const same = (r: RunResult, q: RunResult, what: string, prog = 'qemu-img'): void => {
  assert.equal(asQemu(r.stderr, prog), q.stderr, `${what}: stderr`);
  assert.equal(r.stdout, q.stdout, `${what}: stdout`);
  assert.equal(r.status, q.status, `${what}: exit code`);
};

test('--object secret: parsing and refusals as qemu-img prints them', (t) => {
  if (!requireTools(t)) return;
  const dir = fixtures();
  const cases: string[][] = [
    ['secret,data=abc'],
    ['secret,id=s0'],
    ['secret,id=s0,data=a,file=secret.txt'],
    ['secret,id=s0,data=a', '--object', 'secret,id=s0,data=b'],
    ['secret,id=s0,data=@@,format=base64'],
    ['secret,id=s0,data=YQ==,format=base64'],
    ['secret,id=s0,file=nonexist'],
    ['secret,id=s0,file=.'],
    ['secret,id=s0,file=secret.txt'],
    ['secret,id=s0,data=a,format=hex'],
    ['secret,id=s0,data=a,foo=1'],
    ['secret,id=s0,data=a,x.y=1'],
    ['secret,id=s0,data=a,'],
    ['secret,id=s0,data=a,,b'],
    ['secret,id=,data=a'],
    ['secret,id=1a,data=a'],
    [',id=s0'],
    ['secret,,id=s0'],
    ['secret,id=s0,data'],
    ['help,secret'],
    ['secret'],
    ['id=s0'],
    [''],
    ['foo,id=t0'],
    ['iothread,id=t0'],
    ['qom-type=secret,id=s0,data=a'],
    ['{"qom-type":"secret","id":"s0","data":"a"}'],
    ['secret,help'],
    ['secret,id=s0,data=a,help'],
    ['secret,?'],
    ['secret,id=s0,data=a,keyid=k'],
    ['secret,id=k,data=0123456789abcdef0123456789abcdef', '--object', 'secret,id=s0,data=YQ==,keyid=k'],
    ['secret,id=k,data=0123456789abcdef0123456789abcdef', '--object', 'secret,id=s0,data=YQ==,keyid=k,iv=YQ=='],
    ['secret,id=k,data=short', '--object', 'secret,id=s0,data=YQ==,keyid=k'],
    ['secret,id=k,data=0123456789abcdef0123456789abcdef', '--object', 'secret,id=s0,data=YWFhYWFhYWFhYWFhYWFhYQ==,keyid=k,iv=YWFhYWFhYWFhYWFhYWFhYQ=='],
  ];
  for (const c of cases) {
    const args = ['info', '--object', ...c, 'x.qcow2'];
    same(qimg(args, { cwd: dir }), qemuImg(args, { cwd: dir }), c.join(' '));
  }
  // Every command takes --object (qemu-img processes it while reading the options).
  for (const cmd of [['check'], ['map'], ['measure', '-O', 'qcow2'], ['commit'], ['snapshot', '-l'], ['amend', '-o', 'compat=1.1'], ['rebase', '-u', '-b', ''], ['resize'], ['bench', '-c', '1'], ['dd', 'if=x.qcow2'], ['compare', 'x.qcow2'], ['convert', '-O', 'raw', 'x.qcow2'], ['create', '-f', 'qcow2']]) {
    const args = [cmd[0]!, '--object', 'secret,id=s0', ...cmd.slice(1), 'x.qcow2'];
    same(qimg(args, { cwd: dir }), qemuImg(args, { cwd: dir }), args.join(' '));
  }
  const io = ['--object', 'secret,id=s0', '-c', 'read 0 512', 'x.qcow2'];
  same(qimg(['io', ...io], { cwd: dir }), qemuIo(io, { cwd: dir }), 'qemu-io --object', 'qemu-io');
});

test('--object: types qimg cannot use are refused, help lists what it can create', (t) => {
  if (!requireTools(t)) return;
  const dir = fixtures();
  for (const type of ['throttle-group', 'tls-creds-anon', 'tls-creds-x509', 'authz-simple']) {
    const r = qimg(['info', '--object', `${type},id=t0`, 'x.qcow2'], { cwd: dir });
    assert.equal(r.status, 1, type);
    assert.equal(r.stderr, `qimg: invalid object type: ${type}\n`);
    assert.equal(r.stdout, '');
  }
  const r = qimg(['info', '--object', 'help', 'x.qcow2'], { cwd: dir });
  const q = qemuImg(['info', '--object', 'help', 'x.qcow2'], { cwd: dir });
  assert.equal(r.status, 0);
  assert.equal(q.status, 0);
  const [head, ...types] = r.stdout.trimEnd().split('\n');
  assert.equal(head, q.stdout.split('\n')[0]);
  assert.deepEqual(types, ['  secret']);
  assert.ok(q.stdout.includes('\n  secret\n'));
});

test('--object secret,keyid=: an AES-256-CBC encrypted secret decrypts as qemu decrypts it', (t) => {
  if (!requireTools(t)) return;
  const dir = fixtures();
  const key = randomBytes(32);
  const iv = randomBytes(16);
  const c = createCipheriv('aes-256-cbc', key, iv);
  const ct = Buffer.concat([c.update(SECRET_DATA), c.final()]).toString('base64');
  const master = `secret,id=k,data=${key.toString('base64')},format=base64`;
  const enc = `secret,id=s0,data=${ct},format=base64,keyid=k,iv=${iv.toString('base64')}`;
  // qemu unlocks the image with it: the scheme is qemu's.
  const q = qemuImg(['map', '--object', master, '--object', enc, '--image-opts', 'driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=s0'], { cwd: dir });
  assert.equal(q.status, 0, q.stderr);
  const store = new ObjectStore();
  store.add(master);
  store.add(enc);
  assert.equal(Buffer.from(store.secrets.s0!).toString(), SECRET_DATA);
  const fromFile = new ObjectStore();
  fromFile.add(`secret,id=f,file=${join(dir, 'secret.txt')}`);
  assert.equal(Buffer.from(fromFile.secrets.f!).toString(), SECRET_DATA);
});

test('--image-opts: the same image, and qemu-img\'s refusals, for every command', (t) => {
  if (!requireTools(t)) return;
  const dir = fixtures();
  // info names the image by its option string and reads the same metadata.
  const opts = 'driver=qcow2,file.filename=x.qcow2';
  for (const extra of ['', ',file.locking=off', ',read-only=on', ',file.driver=file']) {
    const args = ['info', '--output=json', '--image-opts', opts + extra];
    const r = qimg(args, { cwd: dir });
    same(r, qemuImg(args, { cwd: dir }), args.join(' '));
    const plain = JSON.parse(qimg(['info', '--output=json', 'x.qcow2'], { cwd: dir }).stdout) as Record<string, unknown>;
    assert.deepEqual({ ...(JSON.parse(r.stdout) as Record<string, unknown>), filename: plain.filename }, plain);
  }
  const cases: string[][] = [
    ['info', '--image-opts', `${opts},foo=1`],
    ['info', '--image-opts', `${opts},read-only`],
    ['info', '--image-opts', `${opts},read-only=maybe`],
    ['info', '--image-opts', `${opts},`],
    ['info', '--image-opts', `${opts},,`],
    ['info', '--image-opts', `,${opts}`],
    ['info', '--image-opts', 'x.qcow2'],
    ['info', '--image-opts', 'help'],
    ['info', '--image-opts', 'driver=qcow2'],
    ['info', '--image-opts', 'driver=foo,file.filename=x.qcow2'],
    ['info', '--image-opts', 'file.filename=x.qcow2'],
    ['info', '--image-opts', 'driver=qcow2,file.filename=nonexist'],
    ['info', '--image-opts', `${opts},file.locking=bad`],
    ['info', '--image-opts', `${opts},file.foo=1`],
    ['info', '--output=json', '--image-opts', `${opts},encrypt.key-secret=nope,file.locking=off`],
    ['info', '--image-opts', 'driver=qcow2,file.filename=o.qcow2,backing.encrypt.key-secret=nope'],
    ['info', '--image-opts', 'driver=raw,file.filename=x.qcow2,key-secret=nope'],
    ['info', '-f', 'qcow2', '--image-opts', opts],
    ['info', '--image-opts', 'driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=nope'],
    ['map', '--image-opts', opts],
    ['map', '--image-opts', `${opts},encrypt.key-secret=nope`],
    ['map', '--image-opts', 'driver=qcow2,file.filename=e.qcow2'],
    ['map', '--image-opts', 'driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=nope'],
    ['map', '--image-opts', 'driver=qcow2,file.filename=oe.qcow2'],
    ['map', '--image-opts', 'driver=qcow2,file.filename=oe.qcow2,backing.encrypt.key-secret=nope'],
    ['map', '--image-opts', 'driver=qcow2,file.filename=o.qcow2,backing.foo=1'],
    ['check', '--image-opts', opts],
    ['check', '--image-opts', `${opts},foo=1`],
    ['compare', '--image-opts', opts, 'driver=raw,file.filename=x.qcow2'],
    ['resize', '--image-opts', `${opts},foo=1`, '2M'],
    ['resize', '--image-opts', `${opts},read-only=on`, '2M'],
    ['commit', '--image-opts', 'driver=qcow2,file.filename=o.qcow2,foo=1'],
    ['amend', '-o', 'compat=1.1', '--image-opts', `${opts},foo=1`],
    ['rebase', '-u', '-b', '', '--image-opts', `${opts},foo=1`],
    ['measure', '-O', 'qcow2', '--image-opts', opts],
    ['convert', '-O', 'qcow2', '--target-image-opts', 'x.qcow2', 'driver=qcow2,file.filename=t.qcow2'],
    ['convert', '-n', '-O', 'qcow2', '--target-image-opts', 'x.qcow2', 'driver=qcow2,file.filename=t.qcow2'],
    ['convert', '-O', 'raw', '--image-opts', 'x.qcow2', 't.raw'],
  ];
  for (const args of cases) same(qimg(args, { cwd: dir }), qemuImg(args, { cwd: dir }), args.join(' '));

  const ioCases: string[][] = [
    ['--image-opts', '-c', 'read -P 0x5a 0 512', opts],
    ['--image-opts', '-c', 'read 0 512', 'driver=qcow2,file.filename=nonexist'],
    ['--image-opts', '-c', 'read 0 512', 'driver=qcow2,file.filename=e.qcow2'],
    ['--image-opts', '-c', 'read 0 512', `${opts},read-only=on`],
    ['--image-opts', '-c', 'read 0 512', `${opts},foo`],
    ['--image-opts', '-c', 'read 0 512', 'driver=foo'],
    ['--image-opts', '-f', 'qcow2', '-c', 'read 0 512', opts],
  ];
  for (const args of ioCases) {
    const r = qimg(['io', ...args], { cwd: dir });
    const q = qemuIo(args, { cwd: dir });
    // qemu-io's timing line differs from run to run: compare all but it.
    const untimed = (s: string): string => s.replace(/^\d+ bytes, .*\n/m, '');
    assert.equal(asQemu(r.stderr, 'qemu-io'), q.stderr, args.join(' '));
    assert.equal(untimed(r.stdout), untimed(q.stdout), args.join(' '));
    assert.equal(r.status, q.status, args.join(' '));
  }
});

test('convert --image-opts and --target-image-opts copy the guest data as qemu-img does', (t) => {
  if (!requireTools(t)) return;
  const dir = fixtures();
  assert.equal(qemuImg(['create', '-q', '-f', 'qcow2', 't.qcow2', '1M'], { cwd: dir }).status, 0);
  const args = ['convert', '-n', '--image-opts', '--target-image-opts', 'driver=qcow2,file.filename=x.qcow2', 'driver=qcow2,file.filename=t.qcow2'];
  const r = qimg(args, { cwd: dir });
  assert.equal(r.status, 0, r.stderr);
  const cmp = qemuImg(['compare', 'x.qcow2', 't.qcow2'], { cwd: dir });
  assert.equal(cmp.status, 0, cmp.stdout);
  // The same target named without its driver: qimg does not guess the target format.
  const probe = qimg(['convert', '-n', '--target-image-opts', 'x.qcow2', 'file.filename=t.qcow2'], { cwd: dir });
  assert.equal(probe.status, 1);
  assert.match(probe.stderr, /does not probe/);
});

test('encrypted images with the key: opened as qemu opens them, and the secret is never printed', async (t) => {
  if (!requireTools(t)) return;
  const dir = fixtures();
  const secret = ['--object', `secret,id=s0,data=${SECRET_DATA}`];
  const e = 'driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=s0';
  const runs = [
    qimg(['map', ...secret, '--image-opts', e], { cwd: dir }),
    qimg(['info', '--output=json', ...secret, '--image-opts', e], { cwd: dir }),
    qimg(['map', ...secret, '--image-opts', 'driver=qcow2,file.filename=oe.qcow2,backing.encrypt.key-secret=s0'], { cwd: dir }),
    qimg(['check', ...secret, '--image-opts', e], { cwd: dir }),
    qimg(['convert', ...secret, '-O', 'raw', '--image-opts', e, 'out.raw'], { cwd: dir }),
    qimg(['create', '-f', 'qcow2', ...secret, '-o', 'encrypt.format=luks,encrypt.key-secret=s0', 'new.qcow2', '1M'], { cwd: dir }),
    qimg(['io', ...secret, '--image-opts', '-c', 'read 0 512', e], { cwd: dir }),
    qimg(['info', '--object', `secret,id=s0,data=${SECRET_DATA},foo=1`, 'x.qcow2'], { cwd: dir }),
    qimg(['info', '--object', `secret,id=s0,data=${SECRET_DATA}`, '--object', `secret,id=s0,data=${SECRET_DATA}`, 'x.qcow2'], { cwd: dir }),
  ];
  for (const r of runs) {
    assert.ok(!r.stdout.includes(SECRET_DATA) && !r.stderr.includes(SECRET_DATA), r.stderr);
  }
  // The commands with the key run as qemu-img's (the data itself: encrypted-images.test.ts).
  for (const [i, r] of runs.slice(0, 7).entries()) assert.equal(r.status, 0, `${i}: ${r.stderr}`);
  const q = qemuImg(['map', ...secret, '--image-opts', e], { cwd: dir });
  assert.equal(runs[0]!.stdout, q.stdout);

  // The library: the same through secrets, blockOptions and passphrase.
  const path = join(dir, 'e.qcow2');
  const attempts = [
    { secrets: { s0: SECRET_DATA }, blockOptions: { 'encrypt.key-secret': 's0' } },
    { secrets: { s0: new TextEncoder().encode(SECRET_DATA) }, blockOptions: { 'encrypt.key-secret': 's0' }, writable: true },
    { passphrase: SECRET_DATA },
  ];
  for (const o of attempts) {
    const img = await openImageFile(path, o);
    try {
      assert.ok(!JSON.stringify(await img.info()).includes(SECRET_DATA));
    } finally {
      await img.close();
    }
    // A wrong key: refused, and neither key in the error.
    const wrong = { ...o, ...('passphrase' in o ? { passphrase: 'wrong' } : { secrets: { s0: 'wrong' } }) };
    await assert.rejects(openImageFile(path, wrong), (err: Error) => err.message === 'Invalid password, cannot unlock any keyslot' && !JSON.stringify(err).includes(SECRET_DATA));
  }
  await assert.rejects(openImageFile(path, { secrets: { s0: SECRET_DATA }, blockOptions: { 'encrypt.key-secret': 'nope' } }), { message: "No secret with id 'nope'" });
  await assert.rejects(openImageFile(join(dir, 'oe.qcow2'), { blockOptions: { 'backing.encrypt.key-secret': 'nope' } }), { message: "Could not open backing file: No secret with id 'nope'" });
  await assert.rejects(openImageFile(join(dir, 'x.qcow2'), { blockOptions: { 'encrypt.foo': '1' } }), { message: "Block format 'qcow2' does not support the option 'encrypt.foo'" });
  // Unencrypted images ignore a key-secret, as qemu does.
  const img = await openImageFile(join(dir, 'x.qcow2'), { blockOptions: { 'encrypt.key-secret': 'nope' } });
  await img.close();
  const meta = await openImageFile(path, { metadataOnly: true, passphrase: SECRET_DATA });
  try {
    assert.ok(!JSON.stringify(await meta.info()).includes(SECRET_DATA));
  } finally {
    await meta.close();
  }
  assert.ok(!readFileSync(path).includes(Buffer.from(SECRET_DATA)));
});
