/**
 * Key-slot amend against qemu: slots added and erased by amendLuksSlots open
 * (or no longer open) in qemu-io, and each refusal carries the message
 * qemu-img amend prints for the same request.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { amendLuksSlots, parseLuksHeader, unlockLuks, type LuksAmendOptions } from '../../src/crypto/luks.js';
import { isImageError } from '../../src/errors.js';
import { nodeCrypto } from '../../src/io/crypto.js';
import { qemuCreateLuks, qemuIoLuks, readAtFile } from '../helpers/luks-files.js';
import { qemuImg, requireTools, tmpDir } from '../helpers/tools.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const AES = { cipherAlg: 'aes-256', cipherMode: 'xts', ivgenAlg: 'plain64', hashAlg: 'sha256' };

async function amendFile(file: string, opts: LuksAmendOptions): Promise<void> {
  const bytes = new Uint8Array(readFileSync(file));
  const h = parseLuksHeader(bytes);
  const { masterKey } = await unlockLuks(h, enc('pw'), readAtFile(file), nodeCrypto);
  const { writes } = await amendLuksSlots(h, masterKey, { iterations: 1000, ...opts }, readAtFile(file), nodeCrypto);
  for (const w of writes) bytes.set(w.data, w.offset);
  writeFileSync(file, bytes);
}

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
