/**
 * getopt_long as glibc does it, because qemu-img scripts rely on its
 * details: bundled short flags (-qp), attached values (-fraw, -oVALUE),
 * --opt=value and --opt value, unique prefixes of long names (--out=json),
 * operands anywhere unless the option string starts with '+', and '--'.
 */

export class UsageError extends Error {
  /** Print the "Try ... --help" hint after the message. */
  readonly hint: boolean;
  constructor(message: string, hint = true) {
    super(message);
    this.hint = hint;
  }
}

export interface LongOption {
  name: string;
  arg: 'none' | 'required' | 'optional';
  /** What the option is reported as: its short letter or its long name. */
  key: string;
}

export interface ParsedOption {
  key: string;
  value?: string;
  /** The argument as written (for error messages). */
  text: string;
}

export interface Parsed {
  options: ParsedOption[];
  operands: string[];
}

/** Parse `args` with a getopt option string (e.g. "f:hU") and long options. */
export function getopt(args: readonly string[], optstring: string, longs: readonly LongOption[] = []): Parsed {
  const inOrder = optstring.startsWith('+');
  const shorts = new Map<string, 'none' | 'required' | 'optional'>();
  const spec = optstring.replace(/^[+:]+/, '');
  for (let i = 0; i < spec.length; i++) {
    const c = spec[i]!;
    if (spec[i + 1] === ':') {
      if (spec[i + 2] === ':') {
        shorts.set(c, 'optional');
        i += 2;
      } else {
        shorts.set(c, 'required');
        i += 1;
      }
    } else {
      shorts.set(c, 'none');
    }
  }
  const options: ParsedOption[] = [];
  const operands: string[] = [];
  let i = 0;
  while (i < args.length) {
    const a = args[i]!;
    if (a === '--') {
      operands.push(...args.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      const exact = longs.find((l) => l.name === name);
      const candidates = exact ? [exact] : longs.filter((l) => l.name.startsWith(name));
      const distinct = new Set(candidates.map((c) => c.key));
      if (candidates.length === 0 || name === '') throw new UsageError(`unrecognized option '${a}'`);
      if (distinct.size > 1) throw new UsageError(`option '${a}' is ambiguous`);
      const opt = candidates[0]!;
      if (opt.arg === 'none') {
        if (eq >= 0) throw new UsageError(`option '--${opt.name}' doesn't allow an argument`);
        options.push({ key: opt.key, text: a });
      } else if (eq >= 0) {
        options.push({ key: opt.key, value: a.slice(eq + 1), text: a });
      } else if (opt.arg === 'required') {
        if (i + 1 >= args.length) throw new UsageError(`missing argument for option '${a}'`);
        options.push({ key: opt.key, value: args[++i]!, text: a });
      } else {
        options.push({ key: opt.key, text: a });
      }
      i++;
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const c = a[j]!;
        const kind = shorts.get(c);
        if (kind === undefined) throw new UsageError(`unrecognized option '${a}'`);
        if (kind === 'none') {
          options.push({ key: c, text: a });
          continue;
        }
        if (j + 1 < a.length) {
          options.push({ key: c, value: a.slice(j + 1), text: a });
        } else if (kind === 'required') {
          if (i + 1 >= args.length) throw new UsageError(`missing argument for option '${a}'`);
          options.push({ key: c, value: args[++i]!, text: a });
        } else {
          options.push({ key: c, text: a });
        }
        break;
      }
      i++;
      continue;
    }
    if (inOrder) {
      operands.push(...args.slice(i));
      break;
    }
    operands.push(a);
    i++;
  }
  return { options, operands };
}

/** qemu's size syntax, shared with -o option values (units.ts). */
export { parseSize } from '../node.js';
