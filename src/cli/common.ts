/** What every subcommand shares: errors, output, opening images. */
import { openImageFile } from '../node.js';
import type { Image } from '../node.js';
import { ImageError, isImageError, parseFormatName, parseOpenTarget, type OpenTarget, type SecretMap } from '../node.js';
import type { ImageFormat } from '../node.js';
import { UsageError } from './options.js';
import { toFixedC } from './format.js';
import { strerror } from '../node.js';
import { personalityOf, type Personality } from './personality.js';

/** The name qimg speaks as: qimg, or qemu-img/qemu-io/qemu-nbd when started through a link of that name. */
export const PROG: Personality = personalityOf(process.argv[1]);

/** A failure to report as `qimg: <message>` with an exit code. */
export class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = 1, options?: { cause?: unknown }) {
    super(message, options);
    this.exitCode = exitCode;
  }
}

export { UsageError };

export const out = (s: string): void => {
  process.stdout.write(s);
};

export const err = (s: string): void => {
  process.stderr.write(s);
};

/** qemu's strerror() text of an error (one table, in src/errno.ts). */
export { strerror };

export const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));


export interface OpenCliOptions {
  format?: string;
  backing?: boolean;
  metadataOnly?: boolean;
  /** -U: ignore other processes' image locks and take none that would stop them. */
  forceShare?: boolean;
  /** Open for writing. */
  writable?: boolean;
  /** cache=unsafe: flushes do nothing. */
  unsafe?: boolean;
  /** Exit code for open failures (compare uses 2). */
  exitCode?: number;
  /** --object secrets, by id. */
  secrets?: SecretMap;
  /** --image-opts: `path` is a qemu option string (driver=...,file.filename=...). */
  imageOpts?: boolean;
}

/** How a command's --object and --image-opts reach openCli. */
export type ImageAccess = Pick<OpenCliOptions, 'secrets' | 'imageOpts'>;

/**
 * An --image-opts argument as an open target, with qemu's deprecation
 * warning for bare booleans; errors read "Could not open 'TEXT': ...".
 */
export function imageOptsTarget(text: string, code = 1): OpenTarget {
  let target: OpenTarget;
  try {
    target = parseOpenTarget(text);
  } catch (e) {
    throw new CliError(`Could not open '${text}': ${messageOf(e)}`, code, { cause: e });
  }
  for (const key of target.shortForm) err(`${PROG}: warning: short-form boolean option '${key}' deprecated\nPlease use ${key}=on instead\n`);
  return target;
}

/** Open as qemu-img's img_open does, with its "Could not open 'X': ..." wrapping. */
export async function openCli(path: string, opts: OpenCliOptions = {}): Promise<Image> {
  const code = opts.exitCode ?? 1;
  if (opts.imageOpts) {
    const target = imageOptsTarget(path, code);
    try {
      if (target.readOnly && opts.writable) throw new Error('Block node is read-only');
      const { format, blockOptions, locking } = target;
      return await openImageFile(target.path, { format, blockOptions, locking, unsafe: opts.unsafe, secrets: opts.secrets, backing: opts.backing, metadataOnly: opts.metadataOnly, forceShare: opts.forceShare, writable: opts.writable, onWarning: err });
    } catch (e) {
      throw new CliError(`Could not open '${path}': ${messageOf(e)}`, code, { cause: e });
    }
  }
  let format: ImageFormat | undefined;
  if (opts.format !== undefined) {
    format = parseFormatName(opts.format);
    if (format === undefined) throw new CliError(`Could not open '${path}': Unknown driver '${opts.format}'`, code);
  }
  try {
    return await openImageFile(path, { format, unsafe: opts.unsafe, secrets: opts.secrets, backing: opts.backing, metadataOnly: opts.metadataOnly, forceShare: opts.forceShare, writable: opts.writable, onWarning: err });
  } catch (e) {
    throw new CliError(`Could not open '${path}': ${messageOf(e)}`, code, { cause: e });
  }
}

export { probedRawWarning } from '../node.js';

const CACHE_MODES = new Set(['none', 'writeback', 'writethrough', 'directsync', 'unsafe', 'off']);
export const validCache = (mode: string): boolean => CACHE_MODES.has(mode);

/**
 * A command's image operand for a library call: the file, its format and,
 * under --image-opts, its open options (secrets always).
 */
export function imageOperand(
  text: string,
  format: string | undefined,
  access: ImageAccess,
  writable = false,
): { path: string; format?: string; secrets?: SecretMap; blockOptions?: Record<string, string>; locking?: OpenTarget['locking'] } {
  if (!access.imageOpts) return { path: text, format, secrets: access.secrets };
  checkImageOptsFormat(true, format);
  const t = imageOptsTarget(text);
  if (t.readOnly && writable) throw new CliError(`Could not open '${text}': Block node is read-only`);
  return { path: t.path, format: t.format, secrets: access.secrets, blockOptions: t.blockOptions, locking: t.locking };
}

/**
 * Under --image-opts qemu names the image by its option string: a library
 * call's "Could not open 'FILE': ..." is reworded so (other errors pass).
 */
export async function namedAsGiven<T>(given: string, path: string, run: () => Promise<T>): Promise<T> {
  if (given === path) return run();
  try {
    return await run();
  } catch (e) {
    const prefix = `Could not open '${path}': `;
    if (e instanceof Error && e.message.startsWith(prefix)) {
      const message = `Could not open '${given}': ${e.message.slice(prefix.length)}`;
      if (isImageError(e)) throw new ImageError(e.code, message, { cause: e, errno: e.errno, hint: e.hint });
      throw new CliError(message, e instanceof CliError ? e.exitCode : 1, { cause: e });
    }
    throw e;
  }
}

/** qemu-img's refusal of -f next to --image-opts (the driver is in the options). */
export function checkImageOptsFormat(imageOpts: boolean, format: string | undefined): void {
  if (imageOpts && format !== undefined) throw new CliError('--image-opts and --format are mutually exclusive');
}

/** --output: qemu-img 7.2 accepts exactly "human" and "json". */
export function outputFormat(v: string): 'human' | 'json' {
  if (v === 'human' || v === 'json') return v;
  throw new CliError('--output must be used with human or json as argument.');
}

/**
 * qemu-img's cvtnum_full: a size with suffixes, or its two-line complaint.
 */
export function cvtnum(name: string, text: string, parse: (t: string) => number | undefined, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = parse(text);
  if (v === undefined) {
    throw new CliError(
      `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for\n${PROG}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`,
    );
  }
  if (v < min || v > max) throw new CliError(`Invalid ${name} specified. Must be between ${min} and ${max}.`);
  return v;
}

/** qemu's progress meter (util/qemu-progress.c): prints when it moves by min_skip percent. */
export class Progress {
  private current = 0;
  private last = 0;
  constructor(
    private readonly enabled: boolean,
    private readonly minSkip: number,
    /** Where the meter goes: stdout as qemu-img, stderr when stdout carries data. */
    private readonly write: (s: string) => void = out,
  ) {}

  /** max=0: `value` is the new absolute percentage; otherwise an increment scaled by max/100. */
  print(value: number, max: number): void {
    // qemu keeps the meter in single precision; the printed digits depend on it.
    let current = Math.fround(max === 0 ? value : this.current + Math.fround(Math.fround(value / 100) * max));
    if (current > 100) current = 100;
    this.current = current;
    if (current > this.last + this.minSkip || current < this.last - this.minSkip || current === 0 || current === 100) {
      this.last = current;
      if (this.enabled) this.write(`    (${toFixedC(current, 2)}/100%)\r`);
    }
  }

  end(): void {
    if (this.enabled) this.write('\n');
  }
}
