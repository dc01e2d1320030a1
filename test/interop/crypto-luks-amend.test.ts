/**
 * Key-slot amend against qemu: slots added and erased by amendLuksSlots open
 * (or no longer open) in qemu-io, and each refusal carries the message
 * qemu-img amend prints for the same request.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { amendLuksSlots, createLuks, parseLuksHeader, unlockLuks, type LuksAmendOptions } from '../../src/crypto/luks.js';
import { LUKS_ERASE_PASSES } from '../../src/crypto/luks-amend.js';
import { applyLuksAmend } from '../../src/formats/luks/amend.js';
import { isImageError } from '../../src/errors.js';
import { nodeCrypto } from '../../src/io/crypto.js';
import { qemuCreateLuks, qemuIoLuks, readAtFile } from '../helpers/luks-files.js';
import { qemuImg, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const AES = { cipherAlg: 'aes-256', cipherMode: 'xts', ivgenAlg: 'plain64', hashAlg: 'sha256' };

async function amendFile(file: string, opts: LuksAmendOptions): Promise<void> {
  const bytes = new Uint8Array(readFileSync(file));
  const h = parseLuksHeader(bytes);
  const { masterKey } = await unlockLuks(h, enc('pw'), readAtFile(file), nodeCrypto);
  const { writes } = await amendLuksSlots(h, masterKey, { iterations: 1000, ...opts }, readAtFile(file), nodeCrypto);
  for (const w of writes) bytes.set(typeof w.data === 'function' ? w.data() : w.data, w.offset);
  writeFileSync(file, bytes);
}

/** Whether any `window`-byte run of `old` occurs in `bytes` (a sampled search: every 64th start). */
function containsPieceOf(bytes: Buffer, old: Buffer, window = 32): boolean {
  for (let o = 0; o + window <= old.length; o += 64) if (bytes.includes(old.subarray(o, o + window))) return true;
  return false;
}

describe('LUKS key-slot erase', () => {
  it(`overwrites the slot's key material ${LUKS_ERASE_PASSES} times with fresh noise, each pass flushed, as qemu`, async () => {
    const created = await createLuks({ iterations: { slot: 1000, masterKey: 1000 } }, enc('pw'), nodeCrypto);
    const bytes = new Uint8Array(created.bytes.length + 4096);
    bytes.set(created.bytes);
    const readAt = (o: number, n: number): Promise<Uint8Array> => Promise.resolve(bytes.slice(o, o + n));
    const log: string[] = [];
    const passes: Uint8Array[] = [];
    const io = {
      readAt,
      write: (o: number, d: Uint8Array) => {
        log.push(`write ${o} ${d.length}`);
        if (o !== 0) passes.push(d.slice());
        bytes.set(d, o);
        return Promise.resolve();
      },
      flush: () => {
        log.push('flush');
        return Promise.resolve();
      },
    };
    const ctx = { encryptionKey: enc('pw'), crypto: nodeCrypto, secrets: { n: 'new' } };
    let h = await applyLuksAmend(created.header, io, { state: 'active', newSecretId: 'n', iterations: 1000 }, ctx, 'key-secret');
    const slot = h.slots[1]!;
    const at = slot.keyMaterialOffsetSectors * 512;
    const length = created.header.keyBytes * slot.stripes;
    const old = Buffer.from(bytes.subarray(at, at + length));
    log.length = 0;
    passes.length = 0;
    h = await applyLuksAmend(h, io, { state: 'inactive', keyslot: 1 }, ctx, 'key-secret');
    assert.equal(h.slots[1]!.active, false);
    // The header first, then every pass over the whole split key, each written out before the next.
    assert.deepEqual(log, ['write 0 592', 'flush', ...Array.from({ length: LUKS_ERASE_PASSES }, () => [`write ${at} ${length}`, 'flush']).flat()]);
    assert.equal(new Set(passes.map((p) => Buffer.from(p).toString('hex'))).size, LUKS_ERASE_PASSES, 'fresh noise each pass');
    assert.equal(containsPieceOf(Buffer.from(bytes), old), false, 'no piece of the old material left');
    await assert.rejects(unlockLuks(h, enc('new'), readAt, nodeCrypto), (e) => isImageError(e, 'bad-secret'));
  });

  it('qimg amend and qemu-img amend both leave none of the erased material, and the same bytes untouched', (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const base = qemuCreateLuks(dir, 'e.luks', AES);
    const add = (file: string) =>
      qemuImg(['amend', '--object', 'secret,id=s,data=pw', '--object', 'secret,id=n,data=new', '--image-opts', `driver=luks,key-secret=s,file.filename=${file}`, '-o', 'state=active,new-secret=n,keyslot=3,iter-time=10']);
    let r = add(base);
    for (let retry = 0; retry < 5 && r.status !== 0 && /Unable to get accurate CPU usage/.test(r.stderr); retry++) r = add(base);
    assert.equal(r.status, 0, r.stderr);
    const before = readFileSync(base);
    const h = parseLuksHeader(new Uint8Array(before));
    const at = h.slots[3]!.keyMaterialOffsetSectors * 512;
    const length = h.keyBytes * h.slots[3]!.stripes;
    const old = before.subarray(at, at + length);
    const [q, m] = [join(dir, 'q.luks'), join(dir, 'm.luks')];
    copyFileSync(base, q);
    copyFileSync(base, m);
    const erase = (file: string) => ['amend', '--object', 'secret,id=s,data=pw', '--image-opts', `driver=luks,key-secret=s,file.filename=${file}`, '-o', 'state=inactive,keyslot=3'];
    assert.equal(qemuImg(erase(q)).status, 0);
    const ours = qimg(erase(m));
    assert.equal(ours.status, 0, ours.stderr);
    const [qb, mb] = [readFileSync(q), readFileSync(m)];
    for (const [who, b] of [['qemu', qb], ['qimg', mb]] as const) {
      assert.equal(containsPieceOf(b, old), false, `${who}: old material gone`);
      assert.ok(b.subarray(0, at).subarray(592).equals(before.subarray(592, at)), `${who}: other slots untouched`);
      assert.ok(b.subarray(at + length).equals(before.subarray(at + length)), `${who}: nothing past the split key written`);
      assert.equal(parseLuksHeader(new Uint8Array(b)).slots[3]!.active, false);
    }
  });
});

describe('LUKS key-slot amend', () => {
  it('a slot added by qimg opens in qemu-io; erasing the first leaves only the new passphrase', async (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const file = qemuCreateLuks(dir, 'a.luks', AES);
    assert.equal(qemuIoLuks(file, 'write -P 0x33 0 4k').status, 0);
    await amendFile(file, { state: 'active', newSecret: enc('second') });
    assert.equal(parseLuksHeader(new Uint8Array(readFileSync(file))).slots[1]!.active, true);
    const r = qemuIoLuks(file, 'read -P 0x33 0 4k', 'second');
    assert.equal(r.status, 0, r.stderr);
    await amendFile(file, { state: 'inactive', oldSecret: enc('pw') });
    assert.match(qemuIoLuks(file, 'read 0 512', 'pw').stderr, /Invalid password, cannot unlock any keyslot/);
    assert.equal(qemuIoLuks(file, 'read -P 0x33 0 4k', 'second').status, 0);
    const h = parseLuksHeader(new Uint8Array(readFileSync(file)));
    assert.deepEqual(
      h.slots.map((s) => s.active),
      [false, true, false, false, false, false, false, false],
    );
  });

  it('refusals match qemu-img amend', async (t) => {
    if (!requireTools(t)) return;
    const dir = tmpDir();
    const base = qemuCreateLuks(dir, 'base.luks', AES);
    const cases: [string, LuksAmendOptions][] = [
      ['state=active', { state: 'active' }],
      ['state=active,new-secret=n,keyslot=0', { state: 'active', newSecret: enc('new'), keyslot: 0 }],
      ['state=active,new-secret=n,keyslot=8', { state: 'active', newSecret: enc('new'), keyslot: 8 }],
      ['state=active,new-secret=n,old-secret=s', { state: 'active', newSecret: enc('new'), oldSecret: enc('pw') }],
      ['state=inactive,new-secret=n', { state: 'inactive', newSecret: enc('new') }],
      ['state=inactive,keyslot=0,iter-time=10', { state: 'inactive', keyslot: 0, iterTime: 10 }],
      ['state=inactive,keyslot=5', { state: 'inactive', keyslot: 5 }],
      ['state=inactive,keyslot=0,old-secret=n', { state: 'inactive', keyslot: 0, oldSecret: enc('new') }],
      ['state=inactive,old-secret=n', { state: 'inactive', oldSecret: enc('new') }],
      ['state=inactive', { state: 'inactive' }],
      ['state=inactive,keyslot=0', { state: 'inactive', keyslot: 0 }],
      ['state=inactive,old-secret=s', { state: 'inactive', oldSecret: enc('pw') }],
    ];
    for (const [qemuOpts, opts] of cases) {
      const file = join(dir, 'c.luks');
      copyFileSync(base, file);
      const q = qemuImg([
        'amend',
        '--object', 'secret,id=s,data=pw',
        '--object', 'secret,id=n,data=new',
        '--image-opts', `driver=luks,key-secret=s,file.filename=${file}`,
        '-o', opts.state === 'active' ? `${qemuOpts},iter-time=10` : qemuOpts,
      ]);
      assert.equal(q.status, 1, qemuOpts);
      await assert.rejects(amendFile(file, opts), (e) => {
        assert.ok(isImageError(e, 'bad-argument'), String(e));
        assert.equal(`qemu-img: ${e.message}\n`, q.stderr, qemuOpts);
        return true;
      });
    }
  });
});
