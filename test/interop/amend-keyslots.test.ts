/**
 * qimg amend's LUKS key slots against qemu-img amend, for qcow2 LUKS
 * (`encrypt.*`) and raw luks volumes: each change made by both on twin
 * copies and the results compared (info without iteration counts, which
 * are timed), the slots opened (or refused) by qemu-io; refusals compared
 * by stderr and exit code; volumes qemu amended opened by qimg.
 */
import assert from 'node:assert/strict';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { amendImageFile, amendOptionHelp, openImageFile } from '../../src/node.js';
import { asQemu, qemuImg, qemuIo, qimg, requireTools, tmpDir } from '../helpers/tools.js';

const SECRETS = ['--object', 'secret,id=s0,data=old', '--object', 'secret,id=s1,data=new', '--object', 'secret,id=s2,data=other'];
const PASSWORDS: Record<string, string> = { s0: 'old', s1: 'new', s2: 'other' };

interface Kind {
  fmt: 'qcow2' | 'luks';
  /** The option prefix amend takes for key slots. */
  prefix: string;
  keyOption: string;
}
const KINDS: Kind[] = [
  { fmt: 'qcow2', prefix: 'encrypt.', keyOption: 'encrypt.key-secret' },
  { fmt: 'luks', prefix: '', keyOption: 'key-secret' },
];

/** qemu-img, run again when its PBKDF2 calibration could not read the CPU time (it happens on a loaded host). */
function qemuImgCalibrated(args: string[], reset?: () => void): ReturnType<typeof qemuImg> {
  let r = qemuImg(args);
  for (let i = 0; i < 4 && r.status !== 0 && /Unable to get accurate CPU usage/.test(r.stderr); i++) {
    reset?.();
    r = qemuImg(args);
  }
  return r;
}

function create(dir: string, k: Kind): string {
  const file = join(dir, `base.${k.fmt}`);
  const o = k.fmt === 'qcow2' ? 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10' : 'key-secret=s0,iter-time=10';
  const r = qemuImgCalibrated(['create', '-q', ...SECRETS, '-f', k.fmt, '-o', o, file, '4M']);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(qemuIo([...SECRETS, '--image-opts', `driver=${k.fmt},file.filename=${file},${k.keyOption}=s0`, '-c', 'write -P 0x5a 0 64k']).status, 0);
  return file;
}

const imageOpts = (k: Kind, file: string, secret = 's0'): string => `driver=${k.fmt},file.filename=${file},${k.keyOption}=${secret}`;
/** `state=active,new-secret=s1` with the format's prefix on every key. */
const opts = (k: Kind, list: string): string => list.split(',').map((kv) => `${k.prefix}${kv}`).join(',');

function twins(base: string, name: string): [string, string] {
  const ext = base.slice(base.lastIndexOf('.'));
  const theirs = base.replace(ext, `-${name}-qemu${ext}`);
  const ours = base.replace(ext, `-${name}-qimg${ext}`);
  copyFileSync(base, theirs);
  copyFileSync(base, ours);
  return [theirs, ours];
}

function amendBoth(k: Kind, base: string, name: string, list: string, extra: string[] = []): { theirs: string; ours: string } {
  const [theirs, ours] = twins(base, name);
  const q = qemuImgCalibrated(['amend', ...SECRETS, ...extra, '--image-opts', imageOpts(k, theirs), '-o', opts(k, list)], () => copyFileSync(base, theirs));
  const m = qimg(['amend', ...SECRETS, ...extra, '--image-opts', imageOpts(k, ours), '-o', opts(k, list)]);
  assert.equal(m.status, q.status, `${list}: ${m.stderr}`);
  assert.equal(asQemu(m.stderr).replaceAll(ours, theirs), q.stderr, list);
  assert.equal(m.stdout, q.stdout, list);
  return { theirs, ours };
}

/** qemu-img info JSON without what differs between twins by nature: names, sizes on disk, timed iteration counts. */
function slotInfo(file: string): unknown {
  const r = qemuImg(['info', '--output=json', file]);
  assert.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout) as Record<string, unknown>;
  delete info.filename;
  delete info['actual-size'];
  return JSON.parse(JSON.stringify(info), (key, v) => (key === 'iters' ? typeof v : v));
}

function qemuReads(k: Kind, file: string, secret: string): { status: number; stderr: string } {
  return qemuIo([...SECRETS, '--image-opts', imageOpts(k, file, secret), '-c', 'read -P 0x5a 0 64k']);
}

async function qimgReads(k: Kind, file: string, secret: string): Promise<number> {
  const img = await openImageFile(file, { format: k.fmt, secrets: PASSWORDS, blockOptions: { [k.keyOption]: secret } });
  try {
    const buf = new Uint8Array(65536);
    await img.read(0, buf);
    return buf.filter((b) => b === 0x5a).length;
  } finally {
    await img.close();
  }
}

for (const k of KINDS) {
  describe(`amend key slots (${k.fmt})`, () => {
    it('adding a slot: qemu-img info shows it as qemu-img amend makes it, qemu-io opens with the new secret', async (t) => {
      if (!requireTools(t)) return;
      const base = create(tmpDir(), k);
      for (const [name, list] of [
        ['first-free', 'state=active,new-secret=s1,iter-time=10'],
        ['slot-5', 'state=active,new-secret=s1,keyslot=5,iter-time=10'],
      ] as const) {
        const { theirs, ours } = amendBoth(k, base, name, list);
        assert.deepEqual(slotInfo(ours), slotInfo(theirs), name);
        assert.equal(qemuReads(k, ours, 's1').status, 0, name);
        assert.equal(qemuReads(k, ours, 's0').status, 0, name);
        const check = k.fmt === 'qcow2' ? qemuImg(['check', ...SECRETS, '--image-opts', imageOpts(k, ours)]) : { status: 0, stderr: '' };
        assert.equal(check.status, 0, check.stderr);
      }
    });

    it('erasing a slot: qemu-io then refuses the old secret with its message', async (t) => {
      if (!requireTools(t)) return;
      const base = create(tmpDir(), k);
      const [two] = twins(base, 'two');
      assert.equal(qemuImgCalibrated(['amend', ...SECRETS, '--image-opts', imageOpts(k, two), '-o', opts(k, 'state=active,new-secret=s1,iter-time=10')]).status, 0);
      for (const [name, list] of [
        ['by-secret', 'state=inactive,old-secret=s0'],
        ['by-slot', 'state=inactive,keyslot=0'],
      ] as const) {
        const { theirs, ours } = amendBoth(k, two, name, list);
        assert.deepEqual(slotInfo(ours), slotInfo(theirs), name);
        const refused = qemuReads(k, ours, 's0');
        assert.equal(refused.status, 1);
        assert.match(refused.stderr, /Invalid password, cannot unlock any keyslot/);
        assert.equal(refused.stderr, qemuReads(k, theirs, 's0').stderr.replaceAll(theirs, ours));
        assert.equal(qemuReads(k, ours, 's1').status, 0);
      }
    });

    it('erasing the last slot needs --force, as in qemu-img', async (t) => {
      if (!requireTools(t)) return;
      const base = create(tmpDir(), k);
      amendBoth(k, base, 'unforced', 'state=inactive,keyslot=0');
      const { theirs, ours } = amendBoth(k, base, 'forced', 'state=inactive,keyslot=0', ['--force']);
      assert.deepEqual(slotInfo(ours), slotInfo(theirs));
      assert.match(qemuReads(k, ours, 's0').stderr, /Invalid password, cannot unlock any keyslot/);
    });

    it('refusals: the message and exit status of qemu-img amend', async (t) => {
      if (!requireTools(t)) return;
      const base = create(tmpDir(), k);
      const full = twins(base, 'full')[0];
      for (let i = 1; i < 8; i++) {
        assert.equal(qemuImgCalibrated(['amend', ...SECRETS, '--image-opts', imageOpts(k, full), '-o', opts(k, 'state=active,new-secret=s1,iter-time=1')]).status, 0);
      }
      const cases: Array<[string, string]> = [
        [base, 'state=active'],
        [base, 'state=active,new-secret=s1,old-secret=s0'],
        [base, 'state=active,new-secret=s1,keyslot=0'],
        [base, 'state=active,new-secret=s1,keyslot=8'],
        [base, 'state=active,new-secret=s1,keyslot=-3'],
        [base, 'state=active,new-secret=s9'],
        [base, 'state=active,new-secret=,iter-time=10'],
        [base, 'state=inactive,keyslot=-1'],
        [base, 'state=inactive,keyslot=4294967295'],
        [base, 'state=inactive,keyslot=0x10'],
        [base, 'state=inactive,keyslot=3'],
        [base, 'state=inactive,keyslot=1k'],
        [base, 'state=inactive,keyslot=99999999999999999999'],
        [base, 'state=inactive,keyslot=18446744073709551615'],
        [base, 'state=inactive,keyslot=0,old-secret=s2'],
        [base, 'state=inactive,old-secret=s2'],
        [base, 'state=inactive,old-secret=s0'],
        [base, 'state=inactive,old-secret=s9,keyslot=99'],
        [base, 'state=inactive,new-secret=s1'],
        [base, 'state=inactive,keyslot=0,iter-time=10'],
        [base, 'state=inactive'],
        [base, 'state=Active'],
        [base, 'iter-time=10'],
        [base, 'state=active,new-secret=s1,iter-time=abc'],
        [base, 'state=active,iter-time=9223372036854775808'],
        [base, 'foo=1'],
        [base, 'key-secret=s0'],
        [full, 'state=active,new-secret=s1,iter-time=1'],
        [full, 'state=inactive,old-secret=s1,keyslot=0'],
      ];
      // The checks are shared code: the raw volume runs every third case (each run starts the CLI).
      for (const [i, [file, list]] of cases.entries()) if (k.fmt === 'qcow2' || i % 3 === 0) amendBoth(k, file, 'refused', list, ['-p']);
      // The image must be opened (unlocked) first.
      for (const access of [['--image-opts', imageOpts(k, base, 's2')], ['-f', k.fmt, base]]) {
        const q = qemuImg(['amend', ...SECRETS, ...access, '-o', opts(k, 'state=active,new-secret=s1')]);
        const m = qimg(['amend', ...SECRETS, ...access, '-o', opts(k, 'state=active,new-secret=s1')]);
        assert.equal(m.status, q.status);
        assert.equal(asQemu(m.stderr), q.stderr);
      }
    });

    it('a volume qemu-img amended opens in qimg with each secret it holds, not with an erased one', async (t) => {
      if (!requireTools(t)) return;
      const base = create(tmpDir(), k);
      const q = (list: string): void => {
        const r = qemuImgCalibrated(['amend', ...SECRETS, '--image-opts', imageOpts(k, base), '-o', opts(k, list)]);
        assert.equal(r.status, 0, r.stderr);
      };
      q('state=active,new-secret=s1,keyslot=6,iter-time=10');
      q('state=active,new-secret=s2,iter-time=10');
      assert.equal(await qimgReads(k, base, 's1'), 65536);
      assert.equal(await qimgReads(k, base, 's2'), 65536);
      q('state=inactive,old-secret=s0');
      await assert.rejects(qimgReads(k, base, 's0'), /Invalid password, cannot unlock any keyslot/);
      assert.equal(await qimgReads(k, base, 's2'), 65536);
    });
  });
}

describe('amend key slots through the library', () => {
  it('amendImageFile takes typed key-slot options; amend -o help lists them as qemu-img does', async (t) => {
    if (!requireTools(t)) return;
    for (const k of KINDS) {
      assert.equal(amendOptionHelp(k.fmt), qemuImg(['amend', '-f', k.fmt, '-o', 'help']).stdout);
      const file = create(tmpDir(), k);
      await amendImageFile(file, { keyslots: { state: 'active', newSecret: 's1', keyslot: 2, iterTime: 10 } }, { format: k.fmt, secrets: PASSWORDS, blockOptions: { [k.keyOption]: 's0' } });
      assert.equal(qemuReads(k, file, 's1').status, 0);
      await assert.rejects(
        amendImageFile(file, { keyslots: { state: 'inactive', keyslot: 2, oldSecret: 's0' } }, { format: k.fmt, secrets: PASSWORDS, blockOptions: { [k.keyOption]: 's0' } }),
        /Given keyslot 2 doesn't contain the given old password for erase operation/,
      );
      await amendImageFile(file, { keyslots: { state: 'inactive', oldSecret: 's0' } }, { format: k.fmt, secrets: PASSWORDS, blockOptions: { [k.keyOption]: 's0' } });
      assert.match(qemuReads(k, file, 's0').stderr, /Invalid password/);
      assert.equal(qemuReads(k, file, 's1').status, 0);
    }
  });
});
