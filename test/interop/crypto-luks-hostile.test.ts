/**
 * Damaged LUKS headers: qemu-img makes a volume, one field is corrupted, and
 * parse + unlock must fail fast with the message qemu-io prints for the same
 * file. Iteration counts past the cap fail at once where qemu would spin.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { MAX_PBKDF2_ITERATIONS, parseLuksHeader, unlockLuks } from '../../src/crypto/luks.js';
import { isImageError } from '../../src/errors.js';
import { nodeCrypto } from '../../src/io/crypto.js';
import { qemuCreateLuks, qemuIoLuks, readAtFile } from '../helpers/luks-files.js';
import { requireTools, tmpDir } from '../helpers/tools.js';

const be32 = (v: number): Uint8Array => Uint8Array.of(v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
const str = (s: string): Uint8Array => new TextEncoder().encode(s);
const SLOT = (i: number, field: number): number => 208 + 48 * i + field;

const CORRUPTIONS: [string, [number, Uint8Array][]][] = [
  ['bad magic', [[0, str('LUKX')]]],
  ['version 2', [[6, Uint8Array.of(0, 2)]]],
  ['cipher name not terminated', [[8, str('a'.repeat(32))]]],
  ['cipher mode not terminated', [[40, str('x'.repeat(32))]]],
  ['hash spec not terminated', [[72, str('x'.repeat(32))]]],
  ['unknown cipher', [[8, str('foo\0')]]],
  ['empty cipher', [[8, str('\0')]]],
  ['unknown mode', [[40, str('foo-plain64\0')]]],
  ['mode without ivgen', [[40, str('xts\0\0\0\0\0\0\0\0\0')]]],
  ['unknown ivgen', [[40, str('xts-foo\0')]]],
  ['essiv without hash', [[40, str('xts-essiv\0')]]],
  ['essiv with an unknown hash', [[40, str('xts-essiv:foo\0')]]],
  ['essiv with no matching key size', [[40, str('xts-essiv:sha1\0')]]],
  ['unknown hash spec', [[72, str('whirlpool\0')]]],
  ['mode before cipher', [[40, str('foo-plain64\0')], [8, str('foo\0')]]],
  ['key size 0', [[108, be32(0)]]],
  ['key size huge', [[108, be32(0x10000000)]]],
  ['odd XTS key size', [[108, be32(33)]]],
  ['key size for the wrong mode', [[40, str('cbc-plain64\0')]]],
  ['payload inside the header', [[104, be32(7)]]],
  ['payload over key material', [[104, be32(4036)]]],
  ['master key iterations 0', [[164, be32(0)]]],
  ['slot state corrupted', [[SLOT(0, 0), be32(0x12345678)]]],
  ['active slot with 0 iterations', [[SLOT(1, 0), be32(0x00ac71f3)]]],
  ['stripes 3999', [[SLOT(0, 44), be32(3999)]]],
  ['stripes on an inactive slot', [[SLOT(3, 44), be32(1)]]],
  ['key material in the header', [[SLOT(0, 40), be32(7)]]],
  ['key material past the payload', [[SLOT(0, 40), be32(0x7fffffff)]]],
  ['slots overlapping', [[SLOT(1, 40), be32(508)]]],
  ['wrong master key digest', [[112, new Uint8Array(20)]]],
  ['only slot disabled', [[SLOT(0, 0), be32(0xdead)]]],
];

describe('hostile LUKS headers', () => {
  it('each fails with the message qemu-io prints', async (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const base = readFileSync(qemuCreateLuks(dir, 'base.luks', { cipherAlg: 'aes-256', cipherMode: 'xts', ivgenAlg: 'plain64', hashAlg: 'sha256' }));
    for (const [name, edits] of CORRUPTIONS) {
      const bytes = new Uint8Array(base);
      for (const [at, b] of edits) bytes.set(b, at);
      const file = join(dir, 'c.luks');
      writeFileSync(file, bytes);
      const q = qemuIoLuks(file, 'read 0 512');
      assert.notEqual(q.status, 0, `${name}: qemu-io opened it`);
      const qemuMessage = q.stderr.replace(/^qemu-io: can't open: /, '').trim();
      const started = Date.now();
      await assert.rejects(
        (async () => unlockLuks(parseLuksHeader(bytes), str('pw'), readAtFile(file), nodeCrypto))(),
        (e) => {
          assert.ok(isImageError(e), `${name}: ${String(e)}`);
          assert.equal(e.message, qemuMessage, name);
          return true;
        },
      );
      // Generous for a loaded host; what matters is seconds, not the hours qemu can spend.
      assert.ok(Date.now() - started < 30_000, `${name}: took ${Date.now() - started} ms`);
    }
  });

  it('iteration counts past the cap fail at once (qemu would run PBKDF2 for hours)', async (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const base = readFileSync(qemuCreateLuks(dir, 'it.luks', { cipherAlg: 'aes-256', cipherMode: 'xts', ivgenAlg: 'plain64', hashAlg: 'sha256' }));
    for (const [at, what] of [
      [SLOT(0, 4), 'Keyslot 0'],
      [164, 'LUKS key'],
    ] as const) {
      const bytes = new Uint8Array(base);
      bytes.set(be32(0xffffffff), at);
      assert.throws(
        () => parseLuksHeader(bytes),
        (e) => isImageError(e, 'unsupported') && e.message === `${what} iteration count 4294967295 is larger than the limit of ${MAX_PBKDF2_ITERATIONS}`,
      );
      bytes.set(be32(MAX_PBKDF2_ITERATIONS), at);
      assert.doesNotThrow(() => parseLuksHeader(bytes));
    }
  });

  it('key material cut off by the end of the file', async (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const file = qemuCreateLuks(dir, 'cut.luks', { cipherAlg: 'aes-256', cipherMode: 'xts', ivgenAlg: 'plain64', hashAlg: 'sha256' });
    const bytes = new Uint8Array(readFileSync(file)).subarray(0, 8192);
    writeFileSync(file, bytes);
    await assert.rejects(unlockLuks(parseLuksHeader(bytes), str('pw'), readAtFile(file), nodeCrypto), (e) =>
      isImageError(e, 'invalid') && /Keyslot 0 key material lies past the end/.test(e.message),
    );
  });
});
