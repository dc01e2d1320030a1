/** The command table, help, and the dispatcher that runs one command line. */
import { err, out, PROG } from '../common.js';
import { breakCmd, removeBreakCmd, resumeCmd, waitBreakCmd } from './breakpoints.js';
import { breakline, type Command, type IoSession } from './command.js';
import { COMMAND_HELP } from './help-texts.js';
import { aioFlushCmd, discardCmd, flushCmd, truncateCmd } from './maintenance.js';
import { abortCmd, sigraiseCmd, sleepCmd } from './process.js';
import { aioReadCmd, readCmd, readvCmd } from './read.js';
import { closeCmd, openCmd, reopenCmd } from './session.js';
import { allocCmd, infoCmd, lengthCmd, mapCmd } from './status.js';
import { aioWriteCmd, writeCmd, writevCmd } from './write.js';

/** Commands whose usage line has no argument part at all (qemu's NULL args): "abort -- ...". */
const NO_ARGS = new Set(['abort', 'aio_flush', 'close', 'flush', 'info', 'length', 'quit', 'sleep']);

/** The line `help` prints for a command, named as the user typed it. */
const helpLine = (typed: string, ct: Command): string => `${typed} ${NO_ARGS.has(ct.name) ? '' : ct.args + ' '}-- ${ct.oneline}\n`;

const quitCmd: Command = {
  name: 'quit',
  altname: 'q',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'exit the program',
  global: true,
  run: async () => 0,
};

const helpCmd: Command = {
  name: 'help',
  altname: '?',
  argmin: 0,
  argmax: 1,
  args: '[command]',
  oneline: 'help for one or all commands',
  global: true,
  async run(_s, argv) {
    if (argv.length === 1) {
      for (const c of [...COMMANDS].sort((a, b) => (a.name < b.name ? -1 : 1))) out(helpLine(c.name, c));
      out("\nUse 'help commandname' for extended help.\n");
      return 0;
    }
    const typed = argv[1]!;
    const ct = findCommand(typed);
    if (!ct) {
      out(`command ${typed} not found\n`);
      return 0;
    }
    out(helpLine(typed, ct) + (COMMAND_HELP[ct.name] ?? ''));
    return 0;
  },
};

const COMMANDS: Command[] = [
  readCmd, readvCmd, writeCmd, writevCmd, aioReadCmd, aioWriteCmd, aioFlushCmd, flushCmd, discardCmd, truncateCmd,
  lengthCmd, infoCmd, mapCmd, allocCmd, openCmd, closeCmd, reopenCmd, abortCmd, sigraiseCmd, sleepCmd,
  breakCmd, removeBreakCmd, resumeCmd, waitBreakCmd, helpCmd, quitCmd,
];

const findCommand = (name: string): Command | undefined => COMMANDS.find((c) => c.name === name || c.altname === name);

/** Run one command line; negative when it failed, 'quit' to stop. */
export async function runCommand(s: IoSession, line: string): Promise<number | 'quit'> {
  const argv = breakline(line);
  if (argv.length === 0) return 0;
  const name = argv[0]!;
  const ct = findCommand(name);
  if (!ct) {
    err(`command "${name}" not found\n`);
    return -22;
  }
  if (ct === quitCmd) return 'quit';
  if (!ct.global && !s.img) {
    err("no file open, try 'help open'\n");
    return -22;
  }
  const n = argv.length - 1;
  if (n < ct.argmin || (ct.argmax !== -1 && n > ct.argmax)) {
    if (ct.argmax === -1) err(`bad argument count ${n} to ${name}, expected at least ${ct.argmin} arguments\n`);
    else if (ct.argmin === ct.argmax) err(`bad argument count ${n} to ${name}, expected ${ct.argmin} arguments\n`);
    else err(`bad argument count ${n} to ${name}, expected between ${ct.argmin} and ${ct.argmax} arguments\n`);
    return -22;
  }
  if (ct.writes && !s.img!.driver.writable) {
    err(`${PROG}: Block node is read-only\n`);
    return -1;
  }
  const r = await ct.run(s, argv);
  // writethrough/directsync: a write command completes only once it is on stable storage.
  if (ct.writes && s.writethrough && s.img) await s.img.flush();
  return r;
}
