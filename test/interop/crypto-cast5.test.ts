/**
 * CAST5 (cast5-128) LUKS volumes, raw and inside qcow2, both ways against
 * qemu: qemu-img makes and qemu-io fills them, the qimg command reads them;
 * the qimg command makes and fills them, qemu reads them. This process runs
 * without --openssl-legacy-provider (as `npm test` does), so every qimg run
 * here goes through the command's rerun with the flag; the library itself,
 * without the flag, must fail before it creates or changes any file.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { portableCrypto } from '../../src/crypto/portable.js';
import type { CipherSpec } from '../../src/crypto/sector-cipher.js';
import { isImageError } from '../../src/errors.js';
import { cast5Available } from '../../src/io/cast5.js';
import { nodeCrypto } from '../../src/io/crypto.js';
import { amendImageFile, convertImageFile, createImageFile, createImageOn, nodeHost, openImageFile, parseCreateOptions } from '../../src/node.js';
import { QEMU_CLOCK_FLAKE } from '../helpers/luks-files.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';

const SECRET = ['--object', 'secret,id=s,data=pw'];
const LEGACY_MESSAGE =
  "Cipher cast5-128 needs OpenSSL's legacy provider: run Node with --openssl-legacy-provider (or set NODE_OPTIONS=--openssl-legacy-provider)";
/** Set by the command's own rerun; set here, it stands for a run that may not rerun. */
const RERUN_GUARD = 'QIMG_LEGACY_PROVIDER_RERUN';
const HAS_LEGACY = cast5Available();

interface Kind {
  name: string;
  format: 'luks' | 'qcow2';
  /** The -o prefix of the LUKS options. */
  prefix: string;
  imageOpts: (file: string) => string;
}

const KINDS: Kind[] = [
  { name: 'raw luks', format: 'luks', prefix: '', imageOpts: (f) => `driver=luks,key-secret=s,file.filename=${f}` },
  { name: 'qcow2 luks', format: 'qcow2', prefix: 'encrypt.', imageOpts: (f) => `driver=qcow2,encrypt.key-secret=s,file.filename=${f}` },
];

const MODES = ['cbc', 'ecb', 'ctr'] as const;
/** essiv: qemu 7.2 refuses CAST5 with it ("Cipher cast5-128 not supported with essiv"), tested below. */
const IVGENS = ['plain', 'plain64'] as const;

function createOptions(kind: Kind, mode: string, ivgen: string, extra: string[] = []): string {
  const p = kind.prefix;
  return [
    ...(kind.format === 'qcow2' ? ['encrypt.format=luks'] : []),
    `${p}key-secret=s`,
    `${p}cipher-alg=cast5-128`,
    `${p}cipher-mode=${mode}`,
    `${p}ivgen-alg=${ivgen}`,
    `${p}iter-time=10`,
    ...extra,
  ].join(',');
}

/** qemu-img, again when its PBKDF2 calibration could not read CPU time (a 10 ms iter-time). */
function qemuImgRetrying(args: string[]): RunResult {
  let r = qemuImg(args);
  for (let retry = 0; retry < 5 && r.status !== 0 && QEMU_CLOCK_FLAKE.test(r.stderr); retry++) r = qemuImg(args);
  return r;
}

function ok(r: RunResult, what: string): RunResult {
  assert.equal(r.status, 0, `${what}: ${r.stderr}${r.stdout}`);
  return r;
}

const sha = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');

/** Two patterns at places that span sectors and clusters, then a read of each and of the zeros between. */
const WRITES = ['write -P 0x5a 0 64k', 'write -P 0xa5 520192 12k'];
const READS = ['read -P 0x5a 0 64k', 'read -P 0xa5 520192 12k'];

/** The guest bytes after zeros and then WRITES. */
function written(): Buffer {
  const b = Buffer.alloc(1 << 20);
  b.fill(0x5a, 0, 65536);
  b.fill(0xa5, 520192, 520192 + 12288);
  return b;
}

describe('CAST5 volumes qemu made, read by the qimg command', () => {
  for (const kind of KINDS) {
    for (const mode of MODES) {
      for (const ivgen of IVGENS) {
        it(`${kind.name} cast5-128 ${mode}-${ivgen}`, (t) => {
          if (!requireTools(t)) return;
          const dir = tmpDir();
          const file = join(dir, `q.${kind.format}`);
          ok(qemuImgRetrying(['create', '-q', '-f', kind.format, ...SECRET, '-o', createOptions(kind, mode, ivgen), file, '1M']), 'qemu-img create');
          // A new raw volume's payload decrypts to noise: zeros first, so every byte is known.
          ok(qemuIo([...SECRET, '--image-opts', kind.imageOpts(file), ...['write -P 0 0 1M', ...WRITES].flatMap((c) => ['-c', c])]), 'qemu-io write');
          const ours = join(dir, 'ours.raw');
          ok(qimg(['convert', ...SECRET, '--image-opts', kind.imageOpts(file), '-O', 'raw', ours]), 'qimg convert');
          assert.ok(readFileSync(ours).equals(written()));
        });
      }
    }
  }
});

describe('CAST5 volumes the qimg command made, read by qemu', () => {
  for (const kind of KINDS) {
    for (const mode of MODES) {
      for (const ivgen of IVGENS) {
        it(`${kind.name} cast5-128 ${mode}-${ivgen}`, (t) => {
          if (!requireTools(t)) return;
          const dir = tmpDir();
          const file = join(dir, `m.${kind.format}`);
          const opts = createOptions(kind, mode, ivgen);
          ok(qimg(['create', '-q', '-f', kind.format, ...SECRET, '-o', opts, file, '1M']), 'qimg create');
          ok(qimg(['io', ...SECRET, '--image-opts', kind.imageOpts(file), ...WRITES.flatMap((c) => ['-c', c])]), 'qimg io write');
          const read = ok(qemuIo([...SECRET, '--image-opts', kind.imageOpts(file), ...READS.flatMap((c) => ['-c', c])]), 'qemu-io read');
          assert.doesNotMatch(read.stdout, /Pattern verification failed/);
          assert.equal(read.stdout.match(/^read \d+\/\d+ bytes/gm)?.length, READS.length);
          const info = JSON.parse(ok(qemuImg(['info', '--output=json', file]), 'qemu-img info').stdout) as {
            'format-specific'?: { data?: { 'cipher-alg'?: string; 'cipher-mode'?: string; 'ivgen-alg'?: string; encrypt?: { 'cipher-alg'?: string; 'cipher-mode'?: string; 'ivgen-alg'?: string } } };
          };
          const luks = kind.format === 'qcow2' ? info['format-specific']?.data?.encrypt : info['format-specific']?.data;
          assert.deepEqual([luks?.['cipher-alg'], luks?.['cipher-mode'], luks?.['ivgen-alg']], ['cast5-128', mode, ivgen]);
          if (kind.format === 'qcow2') {
            const c = qemuImg(['check', ...SECRET, '--image-opts', kind.imageOpts(file)]);
            assert.equal(c.status, 0, c.stderr);
            assert.match(c.stdout, /No errors were found on the image/);
          }
        });
      }
    }
  }

  it('create prints the Formatting line once, as qemu-img prints it', (t) => {
    if (!requireTools(t)) return;
    for (const kind of KINDS) {
      const dir = tmpDir();
      const opts = createOptions(kind, 'ctr', 'plain64');
      const ours = ok(qimg(['create', '-f', kind.format, ...SECRET, '-o', opts, join(dir, 'x'), '1M']), 'qimg create');
      const theirs = ok(qemuImgRetrying(['create', '-f', kind.format, ...SECRET, '-o', opts, join(dir, 'y'), '1M']), 'qemu-img create');
      assert.equal(ours.stdout.replace("/x'", "/y'"), theirs.stdout);
      assert.equal(ours.stderr, '');
    }
  });

  it('convert -O qcow2 with a CAST5 target: qemu reads the same guest data', (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const src = join(dir, 'src.raw');
    ok(qemuImg(['create', '-q', '-f', 'raw', src, '1M']), 'qemu-img create');
    ok(qemuIo(['-f', 'raw', ...WRITES.flatMap((c) => ['-c', c]), src]), 'qemu-io write');
    const out = join(dir, 'out.qcow2');
    const opts = 'encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain64,encrypt.iter-time=10';
    const r = ok(qimg(['convert', ...SECRET, '-O', 'qcow2', '-o', opts, src, out]), 'qimg convert');
    assert.equal(r.stdout + r.stderr, '');
    const cmp = qemuImg(['compare', ...SECRET, '--image-opts', `driver=raw,file.filename=${src}`, KINDS[1]!.imageOpts(out)]);
    assert.equal(cmp.stdout, 'Images are identical.\n', cmp.stderr);
    assert.equal(cmp.status, 0);
    // And back with -p: the meter's first redraw comes before the rerun, which draws it again
    // (the same line, overwritten on a terminal); one finished meter line in all.
    const back = join(dir, 'back.raw');
    const p = ok(qimg(['convert', '-p', ...SECRET, '--image-opts', KINDS[1]!.imageOpts(out), '-O', 'raw', back]), 'qimg convert -p');
    assert.ok(readFileSync(back).equals(readFileSync(src)));
    assert.match(p.stdout, /^( {4}\(0\.00\/100%\)\r)+[^\n]*? {4}\(100\.00\/100%\)\r\n$/);
    assert.equal(p.stderr, '');
  });

  it('convert -O luks onto CAST5: qemu reads the same guest data, zeros included', (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const src = join(dir, 'src.raw');
    ok(qemuImg(['create', '-q', '-f', 'raw', src, '1M']), 'qemu-img create');
    ok(qemuIo(['-f', 'raw', ...WRITES.flatMap((c) => ['-c', c]), src]), 'qemu-io write');
    const out = join(dir, 'out.luks');
    ok(qimg(['convert', ...SECRET, '-O', 'luks', '-o', 'key-secret=s,cipher-alg=cast5-128,cipher-mode=ctr,ivgen-alg=plain,iter-time=10', src, out]), 'qimg convert');
    const cmp = qemuImg(['compare', ...SECRET, '--image-opts', `driver=raw,file.filename=${src}`, KINDS[0]!.imageOpts(out)]);
    assert.equal(cmp.stdout, 'Images are identical.\n', cmp.stderr);
  });

  it('a rerun passes the exit code on: compare says 1 for different contents, as qemu-img', (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const file = join(dir, 'c.luks');
    ok(qemuImgRetrying(['create', '-q', '-f', 'luks', ...SECRET, '-o', createOptions(KINDS[0]!, 'cbc', 'plain64'), file, '1M']), 'qemu-img create');
    ok(qemuIo([...SECRET, '--image-opts', KINDS[0]!.imageOpts(file), '-c', 'write -P 0x11 0 1M']), 'qemu-io write');
    const other = join(dir, 'other.raw');
    ok(qemuImg(['create', '-q', '-f', 'raw', other, '1M']), 'qemu-img create');
    const args = ['compare', ...SECRET, '--image-opts', KINDS[0]!.imageOpts(file), `driver=raw,file.filename=${other}`];
    const theirs = qemuImg(args);
    const ours = qimg(args);
    assert.equal(theirs.status, 1);
    assert.equal(ours.status, theirs.status);
    assert.equal(ours.stdout, theirs.stdout);
  });
});

describe('CAST5 options qemu refuses', () => {
  for (const kind of KINDS) {
    for (const [mode, ivgen] of [
      ['xts', 'plain64'],
      ['cbc', 'essiv'],
    ] as const) {
      it(`${kind.name} ${mode}-${ivgen}: qemu-img's message and exit code`, (t) => {
        if (!requireTools(t)) return;
        const dir = tmpDir();
        const opts = createOptions(kind, mode, ivgen, ivgen === 'essiv' ? [`${kind.prefix}ivgen-hash-alg=sha256`] : []);
        const theirs = qemuImgRetrying(['create', '-f', kind.format, ...SECRET, '-o', opts, join(dir, 'x'), '1M']);
        const ours = qimg(['create', '-f', kind.format, ...SECRET, '-o', opts, join(dir, 'x'), '1M']);
        assert.equal(theirs.status, 1);
        assert.equal(ours.status, theirs.status);
        assert.equal(ours.stdout, theirs.stdout);
        assert.equal(asQemu(ours.stderr), theirs.stderr);
      });
    }
  }
});

describe('CAST5 without the legacy provider', { skip: HAS_LEGACY && 'this process has the legacy provider' }, () => {
  const secrets = { s: 'pw' };

  it('the library refuses to create a raw LUKS volume before the file exists', async () => {
    const file = join(tmpDir(), 'n.luks');
    await assert.rejects(
      createImageFile(file, { format: 'luks', size: 1 << 20, keySecret: 's', cipherAlg: 'cast5-128', cipherMode: 'cbc', iterTime: 10 } as never, { secrets }),
      (e) => isImageError(e, 'cipher-unavailable') && e.message === LEGACY_MESSAGE,
    );
    assert.equal(existsSync(file), false);
  });

  it('the library refuses to create an encrypted qcow2 before the file exists, Formatting line unprinted', async () => {
    const file = join(tmpDir(), 'n.qcow2');
    const lines: string[] = [];
    const options = parseCreateOptions('qcow2', 'encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=ctr,encrypt.iter-time=10');
    await assert.rejects(createImageOn(nodeHost, file, { format: 'qcow2', options, size: 1 << 20, secrets, onFormatting: (l) => lines.push(l) }), (e) => isImageError(e, 'cipher-unavailable'));
    assert.equal(existsSync(file), false);
    assert.deepEqual(lines, []);
  });

  it('convert refuses a CAST5 target before creating it', async (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const src = join(dir, 'src.raw');
    ok(qemuImg(['create', '-q', '-f', 'raw', src, '1M']), 'qemu-img create');
    const out = join(dir, 'out.qcow2');
    await assert.rejects(
      convertImageFile(src, out, { format: 'qcow2', secrets, options: 'encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=cbc,encrypt.iter-time=10' }),
      (e) => isImageError(e, 'cipher-unavailable'),
    );
    assert.equal(existsSync(out), false);
  });

  for (const kind of KINDS) {
    it(`${kind.name}: opening for data and amending key slots fail with the file unchanged`, async (t) => {
      if (!requireTools(t)) return;
      const dir = tmpDir();
      const file = join(dir, `q.${kind.format}`);
      ok(qemuImgRetrying(['create', '-q', '-f', kind.format, ...SECRET, '-o', createOptions(kind, 'cbc', 'plain64'), file, '1M']), 'qemu-img create');
      const before = sha(file);
      const keyOption = kind.format === 'qcow2' ? 'encrypt.key-secret' : 'key-secret';
      const access = { format: kind.format, secrets, blockOptions: { [keyOption]: 's' } };
      await assert.rejects(openImageFile(file, { ...access, writable: true }), (e) => isImageError(e, 'cipher-unavailable') && e.message === LEGACY_MESSAGE);
      await assert.rejects(openImageFile(file, access), (e) => isImageError(e, 'cipher-unavailable'));
      await assert.rejects(
        amendImageFile(file, { keyslots: { state: 'active', newSecret: 's2', iterTime: 10 } }, { ...access, secrets: { ...secrets, s2: 'pw2' } }),
        (e) => isImageError(e, 'cipher-unavailable'),
      );
      assert.equal(sha(file), before);
      // info reads only the header, as qemu-img info: no cipher needed.
      const img = await openImageFile(file, { format: kind.format, metadataOnly: true });
      await img.close();
    });
  }

  it('the qimg command does not rerun twice: the guard gives the library message', (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const file = join(dir, 'g.luks');
    const r = qimg(['create', '-q', '-f', 'luks', ...SECRET, '-o', createOptions(KINDS[0]!, 'cbc', 'plain'), file, '1M'], { env: { [RERUN_GUARD]: '1' } });
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `qimg: ${file}: ${LEGACY_MESSAGE}\n`);
    assert.equal(existsSync(file), false);
  });

  it('NODE_OPTIONS=--openssl-legacy-provider runs CAST5 with no rerun', (t) => {
    if (!requireTools(t)) return;
    const file = join(tmpDir(), 'n.luks');
    const r = qimg(['create', '-q', '-f', 'luks', ...SECRET, '-o', createOptions(KINDS[0]!, 'ecb', 'plain'), file, '1M'], {
      env: { [RERUN_GUARD]: '1', NODE_OPTIONS: '--openssl-legacy-provider' },
    });
    assert.equal(r.status, 0, r.stderr);
    ok(qemuIo([...SECRET, '--image-opts', KINDS[0]!.imageOpts(file), '-c', 'write -P 1 0 4k', '-c', 'read -P 1 0 4k']), 'qemu-io');
  });

  it('the providers: nodeCrypto names the flag, portableCrypto says this build lacks it', () => {
    const spec: CipherSpec = { alg: 'cast5-128', mode: 'cbc', ivgen: 'plain64' };
    assert.throws(() => nodeCrypto.sectorCipher(spec, new Uint8Array(16)), (e) => isImageError(e, 'cipher-unavailable') && e.message === LEGACY_MESSAGE);
    assert.throws(() => portableCrypto.sectorCipher(spec, new Uint8Array(16)), (e) => isImageError(e, 'unsupported') && /not supported by this build/.test(e.message));
  });
});
