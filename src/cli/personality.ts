/**
 * Which program qimg is speaking as. Started through a link named qemu-img,
 * qemu-io or qemu-nbd, it takes that name in every line it prints (error
 * prefix, usage, help, --version), so it can stand in PATH for qemu-utils;
 * under any other name it is qimg.
 */
import { basename } from 'node:path';

export type Personality = 'qimg' | 'qemu-img' | 'qemu-io' | 'qemu-nbd';

const PERSONALITIES: readonly Personality[] = ['qemu-img', 'qemu-io', 'qemu-nbd'];

/** The personality for the path the program was started as (process.argv[1]). */
export function personalityOf(scriptPath: string | undefined): Personality {
  const name = basename(scriptPath ?? '');
  return (PERSONALITIES as readonly string[]).includes(name) ? (name as Personality) : 'qimg';
}

/** The QEMU release whose command-line behaviour qimg follows. */
export const QEMU_COMPAT_VERSION = '7.2.0';

const COPYRIGHT = 'Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n';

/** `--version` text, in the shape each QEMU tool prints it (qimg's own version in parentheses). */
export function versionText(p: Personality, qimgVersion: string): string {
  switch (p) {
    case 'qimg':
      return `qimg version ${qimgVersion}\n`;
    case 'qemu-nbd':
      return `qemu-nbd ${QEMU_COMPAT_VERSION} (qimg ${qimgVersion})\n\n${COPYRIGHT}`;
    default:
      return `${p} version ${QEMU_COMPAT_VERSION} (qimg ${qimgVersion})\n${COPYRIGHT}`;
  }
}

const BUG_FOOTER = '\nSee <https://qemu.org/contribute/report-a-bug> for how to report bugs.\nMore information on the QEMU project at <https://qemu.org>.\n';

/** qemu-img's command list, in the order its help prints them. */
export const QEMU_IMG_COMMAND_ORDER = ['amend', 'bench', 'bitmap', 'check', 'commit', 'compare', 'convert', 'create', 'dd', 'info', 'map', 'measure', 'snapshot', 'rebase', 'resize'];

/** `qemu-img --help`, laid out as 7.2 lays it out, listing qimg's formats. */
export function qemuImgHelp(qimgVersion: string, syntaxes: readonly string[]): string {
  return (
    versionText('qemu-img', qimgVersion) +
    'usage: qemu-img [standard options] command [command options]\n' +
    'QEMU disk image utility\n\n' +
    "    '-h', '--help'       display this help and exit\n" +
    "    '-V', '--version'    output version information and exit\n" +
    "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]\n" +
    '                         specify tracing options\n\n' +
    'Command syntax:\n' +
    syntaxes.map((s) => `  ${s}\n`).join('') +
    '\nCommand parameters:\n' +
    "  'filename' is a disk image filename\n" +
    "  'objectdef' is an object definition; qimg knows 'secret' objects (keys and passwords)\n" +
    "  'fmt' is the disk image format. It is guessed automatically in most cases\n" +
    "  'cache' is the cache mode: 'none', 'writeback' (default, except for convert),\n" +
    "    'writethrough', 'directsync' and 'unsafe' (default for convert)\n" +
    "  'src_cache' is the cache mode used to read input images, with the same values\n" +
    "  'size' is a size in bytes, with the optional suffixes k or K, M, G, T, P and E\n" +
    '    (powers of 1024)\n' +
    "  'output_filename' is the destination disk image filename\n" +
    "  'output_fmt' is the destination format\n" +
    "  'options' is a comma separated list of name=value format options; -o help lists them\n" +
    "  'snapshot_param' is 'snapshot.id=[ID],snapshot.name=[NAME]' or '[ID_OR_NAME]'\n" +
    "  '-h' with or without a command shows this help and lists the supported formats\n" +
    "  '-p' show progress of command (only certain commands)\n" +
    "  '-q' use Quiet mode - do not print any output (except errors)\n" +
    "  '--output' takes the format in which the output must be done (human or json)\n" +
    '\nSupported formats: file luks qcow2 qed raw\n' +
    BUG_FOOTER
  );
}

/** `qemu-io --help`, with 7.2's options. */
export const QEMU_IO_HELP =
  'Usage: qemu-io [OPTIONS]... [-c STRING]... [file]\n' +
  'QEMU Disk exerciser\n\n' +
  '  --object OBJECTDEF   define an object such as \'secret\' for\n' +
  '                       passwords and/or encryption keys\n' +
  '  --image-opts         treat file as option string\n' +
  '  -c, --cmd STRING     execute command with its arguments\n' +
  '                       from the given string\n' +
  '  -f, --format FMT     specifies the block driver to use\n' +
  '  -r, --read-only      export read-only\n' +
  '  -s, --snapshot       use snapshot file\n' +
  '  -n, --nocache        disable host cache, short for -t none\n' +
  '  -C, --copy-on-read   enable copy-on-read\n' +
  '  -m, --misalign       misalign allocations for O_DIRECT\n' +
  '  -k, --native-aio     use kernel AIO implementation\n' +
  '                       (Linux only, prefer use of -i)\n' +
  '  -i, --aio=MODE       use AIO mode (threads, native or io_uring)\n' +
  '  -t, --cache=MODE     use the given cache mode for the image\n' +
  '  -d, --discard=MODE   use the given discard mode for the image\n' +
  '  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n' +
  '                       specify tracing options\n' +
  '                       see qemu-img(1) man page for full description\n' +
  '  -U, --force-share    force shared permissions\n' +
  '  -h, --help           display this help and exit\n' +
  '  -V, --version        output version information and exit\n\n' +
  "See 'qemu-io -c help' for information on available commands.\n" +
  BUG_FOOTER;

/** `qemu-nbd --help`: qimg serves no NBD yet, so only the options it answers. */
export const QEMU_NBD_HELP =
  'Usage: qemu-nbd [OPTIONS] FILE\n' +
  'QEMU Disk Network Block Device Utility\n\n' +
  '  -h, --help                display this help and exit\n' +
  '  -V, --version             output version information and exit\n\n' +
  'This qemu-nbd is qimg, which does not serve NBD yet.\n' +
  BUG_FOOTER;

const AIO_MODES = ['threads', 'native', 'io_uring'];

/** qemu-io's options that take a value (short letters and long names). */
const IO_SHORT_WITH_VALUE = 'cdfitT';
const IO_LONG_WITH_VALUE = ['cmd', 'format', 'cache', 'discard', 'trace', 'aio', 'object'];

export interface QemuIoArgs {
  /** What qimg io is given: argv without the options handled here. */
  args: string[];
  help: boolean;
  version: boolean;
  /** -i/--aio with a mode qemu-io does not know. */
  badAio?: string;
}

/**
 * qemu-io's top-level options that `qimg io` has no use for: -h, -V and the
 * AIO mode (-i/--aio: how requests reach the kernel, which changes no data).
 * Command strings (-c values) are skipped over, never looked into.
 */
export function splitQemuIoArgs(argv: readonly string[]): QemuIoArgs {
  const res: QemuIoArgs = { args: [], help: false, version: false };
  const aio = (mode: string): void => {
    if (!AIO_MODES.includes(mode)) res.badAio ??= mode;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      res.args.push(...argv.slice(i));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq < 0 ? undefined : eq);
      const inline = eq < 0 ? undefined : a.slice(eq + 1);
      const takesValue = IO_LONG_WITH_VALUE.includes(name);
      const value = takesValue && inline === undefined ? argv[i + 1] : inline;
      if (name === 'help') res.help = true;
      else if (name === 'version') res.version = true;
      else if (name === 'aio') aio(value ?? '');
      else {
        res.args.push(a);
        if (takesValue && inline === undefined && value !== undefined) res.args.push(value);
      }
      if (takesValue && inline === undefined) i++;
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      // A cluster of short options; the first one that takes a value ends it.
      let kept = '-';
      let j = 1;
      for (; j < a.length; j++) {
        const c = a[j]!;
        if (IO_SHORT_WITH_VALUE.includes(c)) break;
        if (c === 'h') res.help = true;
        else if (c === 'V') res.version = true;
        else kept += c;
      }
      if (j < a.length) {
        const c = a[j]!;
        const rest = a.slice(j + 1);
        const value = rest !== '' ? rest : argv[++i];
        if (c === 'i') aio(value ?? '');
        else {
          kept += c;
          if (kept.length > 1) res.args.push(kept);
          if (value !== undefined) res.args.push(value);
          continue;
        }
      }
      if (kept.length > 1) res.args.push(kept);
      continue;
    }
    res.args.push(a);
  }
  return res;
}
