/** open, close and reopen: the image the other commands work on. */
import { parseCacheMode, parseImageFilename, parseOptions } from '../../node.js';
import { err, messageOf, out, PROG, probedRawWarning, strerror } from '../common.js';
import { cmdGetopt, usage, type Command, type IoSession } from './command.js';
import { cantOpen, defaultSettings, openWithSettings, parseAioMode, parseDiscardMode, type OpenSettings } from './open-settings.js';
import { flushesEachWrite } from '../../node.js';
import { shouldRerun } from '../legacy-provider.js';

/** A json: filename with a driver key: the format is named, not probed. */
function namesDriver(name: string): boolean {
  try {
    return name.startsWith('json:') && parseImageFilename(name).format !== undefined;
  } catch {
    return false;
  }
}

/** Open `st` into the session; false after printing why not. */
export async function openSession(s: IoSession, st: OpenSettings, reopen = false): Promise<boolean> {
  try {
    s.img = await openWithSettings(st, s.secrets);
  } catch (e) {
    // CAST5 without OpenSSL's legacy provider: the command runs again with it (cli/legacy-provider.ts).
    if (shouldRerun(e)) throw e;
    err(`${PROG}: ${cantOpen(st)}: ${messageOf(e)}\n`);
    return false;
  }
  s.settings = st;
  s.writethrough = flushesEachWrite(st.cache);
  const probed = st.format === undefined && !st.imageOpts && st.options.length === 0 && st.name !== undefined && !namesDriver(st.name);
  if (!reopen && !st.readOnly && !st.snapshot && probed && s.img.format === 'raw' && st.name !== undefined) err(probedRawWarning(st.name));
  return true;
}

/** Close the session's image; the failure line (in qemu-io's words) when its last metadata did not reach the disk. */
export async function closeSession(s: IoSession): Promise<string | undefined> {
  const img = s.img;
  s.img = undefined;
  if (!img) return undefined;
  try {
    await img.close();
    return undefined;
  } catch (e) {
    const msg = messageOf(e);
    return msg === strerror(e) ? `Failed to close '${img.filename}': ${msg}` : msg;
  }
}

export const openCmd: Command = {
  name: 'open',
  altname: 'o',
  argmin: 1,
  argmax: -1,
  args: '[-rsCnkU] [-t cache] [-d discard] [-o options] [path]',
  oneline: 'open the file specified by path',
  global: true,
  async run(s, argv) {
    const p = cmdGetopt(argv, 'snCro:ki:t:d:U');
    if (!p) {
      usage(openCmd);
      return -22;
    }
    const st = defaultSettings();
    for (const [c, v] of p.opts) {
      switch (c) {
        case 's':
          st.snapshot = true;
          break;
        case 'n':
          st.cache = 'none';
          break;
        case 'C':
          st.copyOnRead = true;
          break;
        case 'r':
          st.readOnly = true;
          break;
        case 'k':
          st.nativeAio = true;
          break;
        case 'U':
          st.forceShare = true;
          break;
        case 'i': {
          const mode = parseAioMode(v!);
          if (mode === undefined) {
            err(`${PROG}: Invalid aio option: ${v}\n`);
            return -22;
          }
          st.nativeAio = mode === 'native';
          break;
        }
        case 't': {
          const mode = parseCacheMode(v!);
          if (mode === undefined) {
            err(`${PROG}: Invalid cache option: ${v}\n`);
            return -22;
          }
          st.cache = mode;
          break;
        }
        case 'd': {
          const mode = parseDiscardMode(v!);
          if (mode === undefined) {
            err(`${PROG}: Invalid discard option: ${v}\n`);
            return -22;
          }
          st.discard = mode;
          break;
        }
        case 'o':
          try {
            st.options.push(...parseOptions(v!).entries);
          } catch (e) {
            err(`${PROG}: ${messageOf(e)}\n`);
            return -22;
          }
          break;
      }
    }
    if (p.operands.length > 1) {
      usage(openCmd);
      return -22;
    }
    // --image-opts holds for every open: the operand is an option string, and -o has no place.
    st.imageOpts = s.imageOpts;
    if (st.imageOpts && st.options.length > 0) {
      out("--image-opts and 'open -o' are mutually exclusive\n");
      return -22;
    }
    if (s.img) {
      err(`${PROG}: file open already, try 'help close'\n`);
      return -1;
    }
    st.name = p.operands[0];
    return (await openSession(s, st)) ? 0 : -22;
  },
};

export const closeCmd: Command = {
  name: 'close',
  altname: 'c',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'close the current open file',
  async run(s) {
    const failure = await closeSession(s);
    if (failure !== undefined) {
      err(`${PROG}: ${failure}\n`);
      return -5;
    }
    return 0;
  },
};

export const reopenCmd: Command = {
  name: 'reopen',
  argmin: 0,
  argmax: -1,
  args: '[(-r|-w)] [-c cache] [-o options]',
  oneline: 'reopens an image with new options',
  async run(s, argv) {
    const p = cmdGetopt(argv, 'c:o:rw');
    if (!p) {
      usage(reopenCmd);
      return -22;
    }
    const old = s.settings!;
    const st: OpenSettings = { ...old };
    let rw: 'r' | 'w' | undefined;
    for (const [c, v] of p.opts) {
      if (c === 'c') {
        const mode = parseCacheMode(v!);
        if (mode === undefined) {
          err(`${PROG}: Invalid cache option: ${v}\n`);
          return -22;
        }
        st.cache = mode;
      } else if (c === 'r' || c === 'w') {
        if (rw !== undefined) {
          err(`${PROG}: Only one -r/-w option may be given\n`);
          return -22;
        }
        rw = c;
      } else if (c === 'o') {
        let entries: Array<[string, string]>;
        try {
          entries = parseOptions(v!).entries;
        } catch (e) {
          err(`${PROG}: ${messageOf(e)}\n`);
          return -22;
        }
        // qimg takes no driver option that can change on an open image.
        const [key] = entries[0] ?? [];
        if (key !== undefined) {
          err(`${PROG}: Cannot change the option '${key}'\n`);
          return -22;
        }
      }
    }
    if (p.operands.length > 0) {
      usage(reopenCmd);
      return -22;
    }
    if (rw !== undefined) st.readOnly = rw === 'r';
    // qemu lets -U ride along into a read-write reopen; it only ever relaxed read-only locks.
    if (!st.readOnly) st.forceShare = false;
    if (st.readOnly === old.readOnly && st.cache === old.cache) return 0;
    // The temporary overlay of snapshot mode would not survive being closed.
    if (old.snapshot) {
      err(`${PROG}: Cannot reopen an image opened in snapshot mode\n`);
      return -95;
    }
    const failure = await closeSession(s);
    if (failure !== undefined) {
      err(`${PROG}: ${failure}\n`);
      return -5;
    }
    if (await openSession(s, st, true)) return 0;
    // As a failed reopen in qemu: the image stays open as it was.
    await openSession(s, old, true);
    return -22;
  },
};
