/**
 * LUKS creation with an iter-time so long that qemu's PBKDF2 iteration count
 * overflows: qemu-img's messages and exit codes, compared with qimg's. The
 * counts in the messages come from each program's own PBKDF2 rate, so they
 * are compared as numbers in range, not digit for digit.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { QEMU_CLOCK_FLAKE } from '../helpers/luks-files.js';
import { asQemu, qemuImg, qimg, requireTools, tmpDir, type RunResult } from '../helpers/tools.js';

const SECRET = ['--object', 'secret,id=s,data=pw'];

function qemuImgRetrying(args: string[]): RunResult {
  let r = qemuImg(args);
  for (let retry = 0; retry < 5 && QEMU_CLOCK_FLAKE.test(r.stderr); retry++) r = qemuImg(args);
  return r;
}

/** The message with its iteration count taken out, and the count. */
function splitCount(stderr: string): [string, bigint | undefined] {
  const m = /PBKDF iterations (\d+)/.exec(stderr);
  return [stderr.replace(/PBKDF iterations \d+/, 'PBKDF iterations N'), m ? BigInt(m[1]!) : undefined];
}

const CASES: { iterTime: string; what: string; count?: (n: bigint) => boolean }[] = [
  // qemu's count: rate/s * iter-time / 1000 / 8 for the master-key digest, past 2^32.
  { iterTime: '100000000', what: 'the count passes 32 bits', count: (n) => n > 0xffffffffn },
  // The rate per second times iter-time passes 64 bits: qemu names the rate.
  { iterTime: '10000000000000', what: 'the scaling passes 64 bits', count: (n) => n > 2n ** 64n / 10000000000000n },
  { iterTime: '9223372036854775808', what: 'past a signed 64-bit integer' },
  { iterTime: '18446744073709551615', what: '2^64 - 1 (printed as -1)' },
  { iterTime: '18446744073709551616', what: 'past 64 bits' },
];

describe('LUKS iter-time overflow, as qemu-img', () => {
  for (const c of CASES) {
    for (const format of ['luks', 'qcow2'] as const) {
      it(`${format}: iter-time=${c.iterTime} (${c.what})`, (t) => {
        if (!requireTools(t)) return;
        const dir = tmpDir();
        const opts = format === 'luks' ? `key-secret=s,iter-time=${c.iterTime}` : `encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=${c.iterTime}`;
        const theirs = qemuImgRetrying(['create', '-f', format, ...SECRET, '-o', opts, join(dir, 'q'), '1M']);
        const ours = qimg(['create', '-f', format, ...SECRET, '-o', opts, join(dir, 'm'), '1M']);
        assert.equal(theirs.status, 1, theirs.stderr);
        assert.equal(ours.status, theirs.status);
        assert.equal(ours.stdout.replace("/m'", "/q'"), theirs.stdout);
        const [qMsg, qCount] = splitCount(theirs.stderr);
        const [mMsg, mCount] = splitCount(asQemu(ours.stderr).replace(`${join(dir, 'm')}:`, `${join(dir, 'q')}:`));
        assert.equal(mMsg, qMsg);
        if (c.count) {
          assert.ok(qCount !== undefined && c.count(qCount), `qemu's count ${qCount}`);
          assert.ok(mCount !== undefined && c.count(mCount), `qimg's count ${mCount}`);
        }
      });
    }
  }
});
