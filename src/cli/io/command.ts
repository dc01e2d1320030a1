/** What a qemu-io command is, the session it runs in, and its argument parsing. */
import type { Image, SecretMap } from '../../node.js';
import { err, out } from '../common.js';
import type { OpenSettings } from './open-settings.js';

/** The state commands share: the open image (none after close) and how it was opened. */
export interface IoSession {
  img?: Image;
  /** What the image was opened with, for reopen. */
  settings?: OpenSettings;
  /** cache=writethrough/directsync: each write command is flushed before it completes. */
  writethrough: boolean;
  /** --image-opts: every open's operand is an option string. */
  imageOpts: boolean;
  /** --object secrets, for every open. */
  secrets: SecretMap;
}

export interface Command {
  name: string;
  altname?: string;
  argmin: number;
  argmax: number;
  args: string;
  oneline: string;
  /** Runs without an open image (qemu-io's CMD_FLAG_GLOBAL). */
  global?: boolean;
  /** Needs a writable image (qemu-io's BLK_PERM_WRITE). */
  writes?: boolean;
  run(s: IoSession, argv: string[]): Promise<number>;
}

/** A command that needs an image: the session's, which the dispatcher has checked is open. */
export const image = (s: IoSession): Image => s.img!;

export type Getopt = { opts: [string, string | undefined][]; operands: string[] };

/** glibc getopt for one command's argv (argv[0] is the command name); permutes operands. */
export function cmdGetopt(argv: string[], optstring: string): Getopt | undefined {
  const takesArg = (c: string): boolean | undefined => {
    const i = optstring.indexOf(c);
    return i < 0 || c === ':' ? undefined : optstring[i + 1] === ':';
  };
  const opts: [string, string | undefined][] = [];
  const operands: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a === '-') {
      operands.push(a);
      continue;
    }
    for (let j = 1; j < a.length; j++) {
      const c = a[j]!;
      const t = takesArg(c);
      if (t === undefined) {
        err(`${argv[0]}: invalid option -- '${c}'\n`);
        return undefined;
      }
      if (!t) {
        opts.push([c, undefined]);
        continue;
      }
      if (j + 1 < a.length) opts.push([c, a.slice(j + 1)]);
      else if (i + 1 < argv.length) opts.push([c, argv[++i]!]);
      else {
        err(`${argv[0]}: option requires an argument -- '${c}'\n`);
        return undefined;
      }
      break;
    }
  }
  return { opts, operands };
}

/** qemu-io's qemuio_command_usage. */
export const usage = (ct: Command): void => out(`${ct.name} ${ct.args} -- ${ct.oneline}\n`);

/** qemu's breakline: split on spaces, dropping empty words. */
export const breakline = (line: string): string[] => line.split(' ').filter((w) => w !== '');
