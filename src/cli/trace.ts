/**
 * qemu-img's global -T/--trace [enable=]PATTERN[,events=FILE][,file=FILE].
 * qimg has no trace events, so every pattern names an event that does not
 * exist and gets qemu's warning for one (qemu stays silent for a wildcard
 * that matches nothing; here that would hide that no tracing happens).
 */
import { closeSync, openSync, readFileSync } from 'node:fs';
import { parseOptions } from '../node.js';
import { CliError, err, PROG, strerror } from './common.js';

/** QemuOpts syntax with "enable" as the implied first key. */
function parseTraceOpts(text: string): Map<string, string> {
  const opts = new Map<string, string>();
  for (const [key, value] of parseOptions(text, { impliedKey: 'enable' }).entries) {
    if (key === '' || (key === 'enable' && value === '')) continue;
    if (key !== 'enable' && key !== 'events' && key !== 'file') throw new CliError(`Invalid parameter '${key}'`);
    opts.set(key, value);
  }
  return opts;
}

const warnMissing = (where: string, pattern: string): void => {
  // A leading '-' disables an event; the name is what is looked up.
  const name = pattern.startsWith('-') ? pattern.slice(1) : pattern;
  err(`${where}: warning: trace event '${name}' does not exist\n`);
};

/**
 * 'help': the event list (empty) was asked for, qemu-img then exits 0;
 * 'fail': an events file could not be read (already reported), exit 1.
 */
export function applyTraceOption(text: string): 'ok' | 'help' | 'fail' {
  const opts = parseTraceOpts(text);
  const enable = opts.get('enable');
  if (enable === 'help' || enable === '?') return 'help';
  const events = opts.get('events');
  if (events !== undefined) {
    let body: string;
    try {
      body = readFileSync(events, 'utf8');
    } catch (e) {
      // qemu reports it with the file as location: "qemu-img:FILE: strerror".
      err(`${PROG}:${events}: ${strerror(e)}\n`);
      return 'fail';
    }
    body.split('\n').forEach((line, i) => {
      const p = line.trim();
      if (p !== '' && !p.startsWith('#')) warnMissing(`${PROG}:${events}:${i + 1}`, p);
    });
  }
  if (enable !== undefined) warnMissing(PROG, enable);
  const file = opts.get('file');
  if (file !== undefined) {
    // qemu opens (and so creates) the trace output file; it stays empty here.
    try {
      closeSync(openSync(file, 'a'));
    } catch (e) {
      throw new CliError(`${file}: ${strerror(e)}`, 1);
    }
  }
  return 'ok';
}
