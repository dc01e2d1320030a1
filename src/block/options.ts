/**
 * qemu's `-o key=value,...` option lists: a comma inside a value is written
 * as two commas, a bare key means key=on. OptionBag hands out typed values
 * with qemu's own error texts and reports what nobody asked for.
 */
import { ImageError } from '../errors.js';
import { parseSize } from '../units.js';

export function parseOptionList(text: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  let i = 0;
  while (i < text.length) {
    let item = '';
    while (i < text.length) {
      if (text[i] === ',') {
        if (text[i + 1] === ',') {
          item += ',';
          i += 2;
          continue;
        }
        break;
      }
      item += text[i++];
    }
    i++; // the separating comma
    if (item === '') {
      if (i <= text.length) throw new ImageError('bad-argument', `Invalid option list: ${text}`);
      continue;
    }
    const eq = item.indexOf('=');
    out.push(eq < 0 ? [item, 'on'] : [item.slice(0, eq), item.slice(eq + 1)]);
  }
  return out;
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
