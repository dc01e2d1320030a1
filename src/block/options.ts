/**
 * qemu's `-o key=value,...` option lists: a comma inside a value is written
 * as two commas, a bare key means key=on. OptionBag hands out typed values
 * with qemu's own error texts and reports what nobody asked for.
 */
import { ImageError } from '../errors.js';
import { parseSize } from '../units.js';

/**
 * The three dialects of qemu's option strings, one parser:
 * - `opts` (QemuOpts: -o, --image-opts, -T, -l): a bare key means key=on;
 *   with `impliedKey`, a first item without '=' is that key's value.
 * - `keyval` (--object): a key needs '='; the implied value ends at the
 *   first comma; `help` or `?` anywhere asks for help.
 * - `strict` on top of `opts`: qemu-img's own check of an -o argument (not
 *   empty, no leading comma, no lone trailing comma).
 * Everywhere a doubled comma is a literal one and a lone trailing comma ends
 * the list.
 */
/** qemu's numeric options are unsigned 64-bit. */
const UINT64_MAX = 2n ** 64n - 1n;

export interface OptionSyntax {
  dialect?: 'opts' | 'keyval';
  impliedKey?: string;
  strict?: boolean;
}

export interface ParsedOptions {
  entries: Array<[string, string]>;
  /** A `help` or `?` item (keyval), asking for the list of options. */
  help: boolean;
  /** Keys written bare (key for key=on), which qemu warns about. */
  shortForm: string[];
}

/** qemu-img's is_valid_option_list: an odd run of trailing commas is a lone separator. */
function validOptionList(text: string): boolean {
  if (text === '' || text.startsWith(',')) return false;
  let n = 0;
  while (n < text.length && text[text.length - 1 - n] === ',') n++;
  return n % 2 === 0;
}

/** Read up to an unescaped comma (or, with `stopAtEquals`, an '='); returns [text, next index]. */
function readUntil(text: string, i: number, stopAtEquals: boolean): [string, number] {
  let s = '';
  while (i < text.length) {
    const c = text[i]!;
    if (stopAtEquals && c === '=') break;
    if (c === ',') {
      if (text[i + 1] !== ',') break;
      i++;
    }
    s += c;
    i++;
  }
  return [s, i];
}

export function parseOptions(text: string, syntax: OptionSyntax = {}): ParsedOptions {
  if (syntax.strict && !validOptionList(text)) throw new ImageError('bad-argument', `Invalid option list: ${text}`);
  const result: ParsedOptions = { entries: [], help: false, shortForm: [] };
  const keyval = syntax.dialect === 'keyval';
  let i = 0;
  let first = true;
  while (i < text.length) {
    if (keyval) {
      // keyval keys have no escapes: a key ends at '=' or ','.
      let end = i;
      while (end < text.length && text[end] !== '=' && text[end] !== ',') end++;
      const key = text.slice(i, end);
      if (text[end] !== '=' && (key === 'help' || key === '?')) {
        result.help = true;
      } else if (text[end] !== '=' && first && key !== '' && syntax.impliedKey !== undefined) {
        result.entries.push([syntax.impliedKey, key]);
      } else if (key === '') {
        throw new ImageError('bad-argument', "Invalid parameter ''");
      } else if (text[end] !== '=') {
        throw new ImageError('bad-argument', `Expected '=' after parameter '${key}'`);
      } else {
        const [value, next] = readUntil(text, end + 1, false);
        result.entries.push([key, value]);
        end = next;
      }
      i = end + 1;
    } else {
      const [key, at] = readUntil(text, i, true);
      if (text[at] === '=') {
        const [value, next] = readUntil(text, at + 1, false);
        result.entries.push([key, value]);
        i = next + 1;
      } else {
        if (first && syntax.impliedKey !== undefined) result.entries.push([syntax.impliedKey, key]);
        else if (key !== '' || at < text.length) {
          if (key === '' && syntax.strict) throw new ImageError('bad-argument', `Invalid option list: ${text}`);
          if (key !== '') {
            result.entries.push([key, 'on']);
            result.shortForm.push(key);
          }
        }
        i = at + 1;
      }
    }
    first = false;
  }
  return result;
}

/** An -o list (qemu-img's strict QemuOpts). */
export function parseOptionList(text: string): Array<[string, string]> {
  return parseOptions(text, { strict: true }).entries;
}

const sizeHelp =
  'expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.';

export class OptionBag {
  private readonly values = new Map<string, string>();
  private readonly used = new Set<string>();

  constructor(entries: Iterable<[string, string]> = []) {
    for (const [k, v] of entries) this.values.set(k, v);
  }

  static parse(text: string | undefined): OptionBag {
    return new OptionBag(text ? parseOptionList(text) : []);
  }

  has(key: string): boolean {
    return this.values.has(key);
  }

  /** A copy with nothing marked used: reading it leaves this bag as it was. */
  clone(): OptionBag {
    return new OptionBag(this.values);
  }

  /** A value without marking it used. */
  peek(key: string): string | undefined {
    return this.values.get(key);
  }

  set(key: string, value: string): void {
    this.values.set(key, value);
  }

  string(key: string): string | undefined {
    this.used.add(key);
    return this.values.get(key);
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.string(key);
    if (v === undefined) return dflt;
    if (v === 'on' || v === 'yes' || v === 'true' || v === 'y') return true;
    if (v === 'off' || v === 'no' || v === 'false' || v === 'n') return false;
    throw new ImageError('bad-argument', `Parameter '${key}' expects 'on' or 'off'`);
  }

  size(key: string, dflt: number): number;
  size(key: string, dflt?: number): number | undefined;
  size(key: string, dflt?: number): number | undefined {
    const v = this.string(key);
    if (v === undefined) return dflt;
    const n = parseSize(v);
    if (n === undefined) throw new ImageError('bad-argument', `Parameter '${key}' ${sizeHelp}`);
    return n;
  }

  number(key: string, dflt: number): number {
    const v = this.string(key);
    if (v === undefined) return dflt;
    if (!/^\d+$/.test(v)) throw new ImageError('bad-argument', `Parameter '${key}' expects a number`);
    if (BigInt(v) > UINT64_MAX) throw new ImageError('bad-argument', `Value '${v}' is too large for parameter '${key}'`);
    return Number(v);
  }

  /** Keys given but never read: qemu's "Invalid parameter". */
  unused(): string[] {
    return [...this.values.keys()].filter((k) => !this.used.has(k));
  }

  assertAllUsed(): void {
    const [first] = this.unused();
    if (first !== undefined) throw new ImageError('bad-argument', `Invalid parameter '${first}'`);
  }
}
