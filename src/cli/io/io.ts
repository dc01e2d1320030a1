/**
 * qimg io: qemu-io's command line. Opens the image as its options say, then
 * runs the -c commands (or stdin's lines), each one's output written as
 * soon as it completes, in qemu-io's exact words.
 */
import { createInterface } from 'node:readline';
import { parseCacheMode } from '../../node.js';
import { CliError, err, out, PROG } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt } from '../options.js';
import type { IoSession } from './command.js';
import { runCommand } from './commands.js';
import { defaultSettings, parseAioMode, parseDiscardMode } from './open-settings.js';
import { closeSession, openSession } from './session.js';

export { runCommand };
export { dumpBuffer, report } from './report.js';

export const ioHelp = `usage: qimg io [OPTIONS]... [-c STRING]... [file]

Run qemu-io commands on an image; without -c, commands are read from stdin.
  --object OBJDEF    secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret that
                     key-secret options name (the only object type)
  --image-opts       the file name is an option string: driver=FMT,file.filename=PATH,...
  -c, --cmd=STRING   command to run (repeatable), e.g. -c 'read -P 0 0 64k'
  -f, --format=FMT   image format (raw, qcow2, qed); probed when absent
  -r, --read-only    open read-only (default: read-write)
  -s, --snapshot     writes go to a temporary overlay; the image itself is not changed
  -n, --nocache      short for -t none
  -C, --copy-on-read data read from the backing chain is written into the image
  -m, --misalign     accepted: qimg's requests need no buffer alignment
  -k, --native-aio   short for -i native
  -i, --aio=MODE     threads, native (needs -t none or directsync) or io_uring
  -t, --cache=MODE   writeback (default), none, writethrough or directsync (each write command
                     is flushed before it completes), unsafe (flushes do nothing)
  -d, --discard=MODE ignore|off (discard requests do nothing) or unmap|on (the default)
  -T, --trace=EVENT  qimg has no trace events; warns as qemu-io does for an unknown one
  -U, --force-share  with -r: open even while another process writes the image
The file may be a path, file:PATH or json:{...} (qemu's option names, nested or dotted).

Commands (qimg io -c help lists them, -c 'help CMD' explains one): read, readv, write, writev,
  aio_read, aio_write, aio_flush, flush, discard, truncate, map, alloc, length, info, open,
  close, reopen, sigraise, sleep, abort, break, wait_break, resume, remove_break, help, quit
`;

export async function cmdIo(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, 'hVc:d:f:rsnmCki:t:T:U', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'cmd', arg: 'required', key: 'c' },
    { name: 'read-only', arg: 'none', key: 'r' },
    { name: 'snapshot', arg: 'none', key: 's' },
    { name: 'nocache', arg: 'none', key: 'n' },
    { name: 'copy-on-read', arg: 'none', key: 'C' },
    { name: 'native-aio', arg: 'none', key: 'k' },
    { name: 'aio', arg: 'required', key: 'i' },
    { name: 'cache', arg: 'required', key: 't' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'trace', arg: 'required', key: 'T' },
    { name: 'discard', arg: 'required', key: 'd' },
    { name: 'misalign', arg: 'none', key: 'm' },
  ]);
  const cmds: string[] = [];
  const objects = new ObjectStore();
  const st = defaultSettings();
  for (const o of options) {
    switch (o.key) {
      case 'h':
        out(ioHelp);
        return 0;
      case 'c':
        cmds.push(o.value!);
        break;
      case 'f':
        st.format = o.value;
        break;
      case 'r':
        st.readOnly = true;
        break;
      case 's':
        st.snapshot = true;
        break;
      case 'C':
        st.copyOnRead = true;
        break;
      case 'd': {
        const mode = parseDiscardMode(o.value!);
        if (mode === undefined) throw new CliError(`Invalid discard option: ${o.value}`);
        st.discard = mode;
        break;
      }
      case 't': {
        const mode = parseCacheMode(o.value!);
        if (mode === undefined) throw new CliError(`Invalid cache option: ${o.value}`);
        st.cache = mode;
        break;
      }
      case 'n':
        // cache=none: bypassing the page cache changes nothing that is read or written (see io/cache.ts).
        st.cache = 'none';
        break;
      case 'k':
        st.nativeAio = true;
        break;
      case 'i': {
        const mode = parseAioMode(o.value!);
        if (mode === undefined) throw new CliError(`Invalid aio option: ${o.value}`);
        st.nativeAio = mode === 'native';
        break;
      }
      case 'm':
        // Misaligned buffers: qimg's requests have no alignment to break, so
        // every request already takes the path -m is meant to exercise.
        break;
      case 'T':
        // qimg has no trace events: qemu's warning for a pattern that matches none.
        err(`${PROG}: warning: trace event '${o.value}' does not exist\n`);
        break;
      case 'U':
        st.forceShare = true;
        break;
      case 'image-opts':
        st.imageOpts = true;
        break;
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
    }
  }
  if (operands.length > 1) throw new CliError('too many arguments', 1);
  if (st.imageOpts && st.format !== undefined) throw new CliError('--image-opts and -f are mutually exclusive');
  const session: IoSession = { writethrough: false, imageOpts: st.imageOpts, secrets: objects.secrets };
  if (operands.length === 1) {
    st.name = operands[0]!;
    if (!(await openSession(session, st))) return 1;
  }
  let failed = false;
  try {
    const fromStdin = cmds.length === 0;
    const lines: AsyncIterable<string> | string[] = fromStdin ? createInterface({ input: process.stdin, terminal: false }) : cmds;
    // Commands read from stdin are prompted for, as qemu-io does ("qemu-io> " before each, and at the end).
    const prompt = (): void => {
      if (fromStdin) out(`${PROG}> `);
    };
    prompt();
    for await (const line of lines) {
      const r = await runCommand(session, line);
      if (r === 'quit') break;
      if (r < 0) failed = true;
      prompt();
    }
  } finally {
    // Closing writes the last metadata; a failure there is the user's data
    // not reaching the disk, so it is reported (one line) and fails the run.
    const failure = await closeSession(session);
    if (failure !== undefined) throw new CliError(failure, 1);
  }
  return failed ? 1 : 0;
}
