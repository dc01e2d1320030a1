/**
 * break, wait_break, resume and remove_break: blkdebug's request
 * breakpoints. qimg opens no blkdebug node, so they fail as qemu-io's do
 * on an image without one.
 */
import { out } from '../common.js';
import type { Command } from './command.js';

const ENOTSUP = 'Operation not supported';

function breakpointCommand(name: string, args: string, oneline: string, argc: number, failure: (argv: string[]) => string): Command {
  return {
    name,
    argmin: argc,
    argmax: argc,
    args,
    oneline,
    async run(_s, argv) {
      out(failure(argv) + '\n');
      return -95;
    },
  };
}

export const breakCmd = breakpointCommand('break', 'event tag', 'sets a breakpoint on event and tags the stopped request as tag', 2, () => `Could not set breakpoint: ${ENOTSUP}`);
export const removeBreakCmd = breakpointCommand('remove_break', 'tag', 'remove a breakpoint by tag', 1, (argv) => `Could not remove breakpoint ${argv[1]}: ${ENOTSUP}`);
export const resumeCmd = breakpointCommand('resume', 'tag', 'resumes the request tagged as tag', 1, () => `Could not resume request: ${ENOTSUP}`);
// qemu-io waits forever here for a request that can never be suspended; qimg says so instead of hanging.
export const waitBreakCmd = breakpointCommand('wait_break', 'tag', 'waits for the suspension of a request', 1, (argv) => `Could not wait for breakpoint ${argv[1]}: ${ENOTSUP}`);
