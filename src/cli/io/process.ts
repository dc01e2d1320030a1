/** abort, sigraise and sleep: the commands that act on the qemu-io process itself. */
import { constants } from 'node:os';
import { out } from '../common.js';
import type { Command } from './command.js';
import { cvtnum, cvtnumErr } from './numbers.js';

/** Let what is written so far reach stdout and stderr before the process dies of a signal. */
async function drained(): Promise<void> {
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  await new Promise<void>((resolve) => process.stderr.write('', () => resolve()));
}

export const abortCmd: Command = {
  name: 'abort',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'simulate a program crash using abort(3)',
  global: true,
  async run() {
    // As qemu-io: die at once, nothing flushed or closed (crash simulation). SIGABRT gives exit status 134.
    await drained();
    process.kill(process.pid, 'SIGABRT');
    return new Promise<number>(() => {});
  },
};

/** The highest signal number plus one (glibc's NSIG on Linux). */
const NSIG = 65;

export const sigraiseCmd: Command = {
  name: 'sigraise',
  argmin: 1,
  argmax: 1,
  args: 'signal',
  oneline: 'raises a signal',
  global: true,
  async run(_s, argv) {
    const arg = argv[1]!;
    const sig = cvtnum(arg);
    if (sig < 0) {
      cvtnumErr(sig, arg);
      return sig;
    }
    if (sig > NSIG) {
      out(`signal argument '${arg}' is too large to be a valid signal\n`);
      return -22;
    }
    if (sig === 0) return 0;
    await drained();
    // A signal Node does not know by name still goes by number; one that does not kill returns here.
    const known = Object.values(constants.signals).includes(sig);
    if (known) process.kill(process.pid, sig);
    return 0;
  },
};

/** strtol(arg, &end, 0) with nothing left over. */
function parseMilliseconds(arg: string): number {
  let m: RegExpExecArray | null;
  if ((m = /^\s*([+-]?)0[xX]([0-9a-fA-F]+)$/.exec(arg))) return (m[1] === '-' ? -1 : 1) * parseInt(m[2]!, 16);
  if ((m = /^\s*([+-]?)(0[0-7]*)$/.exec(arg))) return (m[1] === '-' ? -1 : 1) * parseInt(m[2]!, 8);
  if (/^\s*[+-]?\d+$/.test(arg)) return parseInt(arg, 10);
  return NaN;
}

export const sleepCmd: Command = {
  name: 'sleep',
  argmin: 1,
  argmax: 1,
  args: '',
  oneline: 'waits for the given value in milliseconds',
  global: true,
  async run(_s, argv) {
    const ms = parseMilliseconds(argv[1]!);
    if (!(ms >= 0)) {
      out(`${argv[1]} is not a valid number\n`);
      return -22;
    }
    await new Promise((resolve) => setTimeout(resolve, ms));
    return 0;
  },
};
