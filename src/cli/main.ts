#!/usr/bin/env node
/**
 * The qimg command: qemu-img's subcommands plus `io` (qemu-io's commands).
 * Every failure is one `qimg: <message>` on stderr (or qemu-img:/qemu-io: when started
 * through a link of that name, see personality.ts) and qemu-img's exit code.
 */
import { readFileSync } from 'node:fs';
import { onLockWarning } from '../node.js';
import { CliError, err, out, PROG } from './common.js';
import { cmdBench } from './img/bench.js';
import { cmdAmend } from './img/amend.js';
import { cmdBitmap } from './img/bitmap.js';
import { cmdCheck } from './img/check.js';
import { cmdCommit } from './img/commit.js';
import { cmdCompare } from './img/compare.js';
import { cmdConvert } from './img/convert.js';
import { cmdCreate } from './img/create.js';
import { cmdDd } from './img/dd.js';
import { cmdMeasure } from './img/measure.js';
import { cmdInfo } from './img/info.js';
import { cmdMap } from './img/map.js';
import { cmdResize } from './img/resize.js';
import { cmdSnapshot } from './img/snapshot.js';
import { cmdRebase } from './img/rebase.js';
import { cmdIo } from './io/io.js';
import { rerunWithLegacyProvider, shouldRerun, watchOutput } from './legacy-provider.js';
import { cmdServe } from './nbd/serve.js';
import { getopt, UsageError } from './options.js';
import { applyTraceOption } from './trace.js';
import { QEMU_IMG_COMMAND_ORDER, QEMU_IO_HELP, QEMU_NBD_HELP, qemuImgHelp, splitQemuIoArgs, versionText } from './personality.js';

type Handler = (args: string[]) => Promise<number>;

const COMMANDS: Record<string, { run: Handler; syntax: string }> = {
  amend: { run: cmdAmend, syntax: 'amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename' },
  bench: {
    run: cmdBench,
    syntax: 'bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename',
  },
  bitmap: {
    run: cmdBitmap,
    syntax:
      'bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap',
  },
  check: { run: cmdCheck, syntax: 'check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename' },
  commit: {
    run: cmdCommit,
    syntax: 'commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename',
  },
  compare: { run: cmdCompare, syntax: 'compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2' },
  convert: {
    run: cmdConvert,
    syntax: 'convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename',
  },
  create: { run: cmdCreate, syntax: 'create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]' },
  dd: {
    run: cmdDd,
    syntax: 'dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output',
  },
  info: { run: cmdInfo, syntax: 'info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename' },
  measure: { run: cmdMeasure, syntax: 'measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]' },
  map: { run: cmdMap, syntax: 'map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename' },
  resize: {
    run: cmdResize,
    syntax: 'resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size',
  },
  snapshot: {
    run: cmdSnapshot,
    syntax: 'snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename',
  },
  rebase: {
    run: cmdRebase,
    syntax: 'rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename',
  },
  io: { run: cmdIo, syntax: "io [--object objectdef] [--image-opts] [-f fmt] [-r] [-U] [-c 'command']... filename" },
  serve: {
    run: (args) => cmdServe(args, version),
    syntax: 'serve [-f fmt] [-b addr] [-p port] [-k socket] [-x name] [-D desc] [-r] [-s] [-l snapshot] [-t] [-e N] [-A] [-B bitmap] [--object objectdef] [--tls-creds id] [--image-opts] [--fork] [--pid-file file] filename',
  },
};

export function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function help(): string {
  if (PROG === 'qemu-img') return qemuImgHelp(version(), QEMU_IMG_COMMAND_ORDER.map((n) => COMMANDS[n]!.syntax));
  return (
    `${PROG} version ${version()}\n` +
    `usage: ${PROG} [standard options] command [command options]\n` +
    'Disk image utility for qcow2, QED and raw images, compatible with qemu-img and qemu-io\n\n' +
    "    '-h', '--help'       display this help and exit\n" +
    "    '-V', '--version'    output version information and exit\n" +
    "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]\n" +
    '                         accepted, but qimg has no trace events: each pattern is\n' +
    "                         reported as one that does not exist\n\n" +
    'Command syntax:\n' +
    Object.values(COMMANDS)
      .map((c) => `  ${c.syntax}\n`)
      .join('') +
    '\nCommand parameters:\n' +
    "  'filename' is a disk image filename\n" +
    "  'fmt' is the disk image format (raw, qcow2, qed); it is guessed automatically in most cases\n" +
    "  'cache' is the cache mode: 'none', 'writeback', 'writethrough', 'directsync' or 'unsafe'\n" +
    `  'size' is a size in bytes, optionally with the suffixes k or K (1024), M, G, T, P, E\n\n` +
    `Run '${PROG} COMMAND --help' for the options of one command.\n`
  );
}

export async function main(argv: string[]): Promise<number> {
  onLockWarning((message) => err(`${PROG}: warning: ${message}\n`));
  try {
    // Global options stop at the command name.
    const { options, operands } = getopt(argv, '+:hVT:', [
      { name: 'help', arg: 'none', key: 'h' },
      { name: 'version', arg: 'none', key: 'V' },
      { name: 'trace', arg: 'required', key: 'T' },
    ]);
    for (const o of options) {
      if (o.key === 'h') {
        out(help());
        return 0;
      }
      if (o.key === 'V') {
        out(versionText(PROG, version()));
        return 0;
      }
      if (o.key === 'T') {
        const r = applyTraceOption(o.value ?? '');
        if (r === 'help') return 0;
        if (r === 'fail') return 1;
      }
    }
    const name = operands[0];
    if (name === undefined) throw new UsageError('Not enough arguments');
    // As qemu-img, only qemu-img's commands exist (qemu-io's commands are the qemu-io program's).
    const known = Object.prototype.hasOwnProperty.call(COMMANDS, name) && (PROG !== 'qemu-img' || QEMU_IMG_COMMAND_ORDER.includes(name));
    const cmd = known ? COMMANDS[name] : undefined;
    if (!cmd) throw new UsageError(`Command not found: ${name}`);
    return await cmd.run(operands.slice(1));
  } catch (e) {
    // CAST5 needs OpenSSL's legacy provider: run again with it, as if it had always been on.
    if (shouldRerun(e)) return await rerunWithLegacyProvider();
    return reportError(e);
  }
}

/** One `PROG: message` line for a failure, and the exit code it means. */
function reportError(e: unknown): number {
  if (process.env.QIMG_DEBUG === '1' && e instanceof Error) err(`${e.stack}\n`);
  if (e instanceof UsageError) {
    err(`${PROG}: ${e.message}\n`);
    if (PROG === 'qemu-io') out(QEMU_IO_HELP); // qemu-io follows a bad option with its usage
    else if (e.hint) err(`Try '${PROG} --help' for more information\n`);
    return 1;
  }
  if (e instanceof CliError) {
    err(`${PROG}: ${e.message}\n`);
    return e.exitCode;
  }
  err(`${PROG}: ${e instanceof Error ? e.message : String(e)}\n`);
  return 1;
}

/** Started as qemu-io: qemu-io's top-level options, then `qimg io`. */
export async function qemuIoMain(argv: string[]): Promise<number> {
  onLockWarning((message) => err(`${PROG}: warning: ${message}\n`));
  try {
    const split = splitQemuIoArgs(argv);
    if (split.help) {
      out(QEMU_IO_HELP);
      return 0;
    }
    if (split.version) {
      out(versionText(PROG, version()));
      return 0;
    }
    if (split.badAio !== undefined) throw new CliError(`Invalid aio option: ${split.badAio}`);
    return await cmdIo(split.args);
  } catch (e) {
    if (shouldRerun(e)) return await rerunWithLegacyProvider();
    return reportError(e);
  }
}

/** Started as qemu-nbd: its --help and --version, otherwise `qimg serve` (qemu-nbd's options). */
export async function qemuNbdMain(argv: string[]): Promise<number> {
  if (argv.includes('-h') || argv.includes('--help')) {
    out(QEMU_NBD_HELP);
    return 0;
  }
  if (argv.includes('-V') || argv.includes('--version')) {
    out(versionText(PROG, version()));
    return 0;
  }
  try {
    return await cmdServe(argv, version);
  } catch (e) {
    return reportError(e);
  }
}

function entry(argv: string[]): Promise<number> {
  if (PROG === 'qemu-io') return qemuIoMain(argv);
  if (PROG === 'qemu-nbd') return qemuNbdMain(argv);
  return main(argv);
}

// A closed pipe (qimg ... | head) is not an error worth a stack trace.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
});

entry(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    err(`${PROG}: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
