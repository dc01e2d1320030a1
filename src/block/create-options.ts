/**
 * Creation options as qemu-img takes them (`-o key=value,...`) and as a
 * program passes them (a typed object): each format describes its options
 * once (name, type, help, the typed key), and the two spellings meet in an
 * OptionBag, which the format reads with qemu's checks and messages.
 */
import { ImageError } from '../errors.js';
import { parseSize } from '../units.js';
import { formatDescriptor } from './format.js';
import { OptionBag, parseOptionList } from './options.js';

export type OptionType = 'size' | 'str' | 'bool' | 'num';

export interface OptionSpec {
  /** qemu's name (`cluster_size`). */
  name: string;
  type: OptionType;
  help: string;
  /** The typed options' key (`clusterSize`), where a program may set it. */
  key?: string;
}

export const option = (name: string, type: OptionType, help: string, key?: string): OptionSpec =>
  key === undefined ? { name, type, help } : { name, type, help, key };

/**
 * The file protocol's create options, in the order qemu prints them on the
 * Formatting line: they apply to whatever file the image is created in.
 */
export const FILE_PROTOCOL_OPTIONS: readonly OptionSpec[] = [
  option('size', 'size', 'Virtual disk size'),
  option('nocow', 'bool', 'Turn off copy-on-write (valid only on btrfs)'),
  option('preallocation', 'str', 'Preallocation mode (allowed values: off, falloc, full)', 'preallocation'),
  option('extent_size_hint', 'size', 'Extent size hint for the image file, 0 to disable'),
];

/** A format's options followed by the protocol's, duplicates dropped (qemu_opts_append). */
export function allCreateOptions(format: string): OptionSpec[] {
  const list = [...formatDescriptor(format).createOptions];
  for (const o of FILE_PROTOCOL_OPTIONS) if (!list.some((x) => x.name === o.name)) list.push(o);
  return list;
}

const TYPE_HINT: Record<OptionType, string> = { size: '<size>', str: '<str>', bool: '<bool (on/off)>', num: '<num>' };

/**
 * qemu-img's `-o help` text (print_block_option_help): the format's options
 * sorted, and the protocol's too when a file name is given.
 */
export function createOptionHelp(format: string, withProtocol: boolean): string {
  const list = withProtocol ? allCreateOptions(format) : [...formatDescriptor(format).createOptions];
  const sorted = list.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let s = withProtocol ? 'Supported options:\n' : `Supported ${format} options:\n`;
  for (const o of sorted) s += `  ${(o.name + '=' + TYPE_HINT[o.type]).padEnd(22)} - ${o.help}\n`;
  if (!withProtocol) s += '\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n';
  return s;
}

/**
 * An `-o` option list checked as qemu_opts_do_parse does against the
 * format's and the protocol's options: unknown keys and badly typed values
 * are refused (ImageError 'bad-argument'). Returns the bag of given options.
 */
export function parseCreateOptions(format: string, text: string | undefined): OptionBag {
  const specs = allCreateOptions(format);
  const check = OptionBag.parse(text);
  for (const o of specs) {
    if (!check.has(o.name)) continue;
    if (o.type === 'size') check.size(o.name);
    else if (o.type === 'bool') check.bool(o.name, false);
    else if (o.type === 'num') check.number(o.name, 0);
    else check.string(o.name);
  }
  check.assertAllUsed();
  return OptionBag.parse(text);
}

/** Whether an option list asks for help ("help" or "?" as one item), as qemu-img's has_help_option. */
export function hasHelpOption(text: string): boolean {
  try {
    return parseOptionList(text).some(([k, v]) => v === 'on' && (k === 'help' || k === '?'));
  } catch {
    return false;
  }
}

/**
 * Typed creation options as the bag qemu's parser reads: each key the
 * format's (or the protocol's) options name becomes its -o value. Unknown
 * keys are refused, so a misspelt option is never silently ignored.
 */
export function optionsToBag(format: string, options: object): OptionBag {
  const specs = allCreateOptions(format);
  const bag = new OptionBag();
  for (const [key, value] of Object.entries(options)) {
    if (key === 'format' || value === undefined) continue;
    const spec = key === 'size' ? specs.find((s) => s.name === 'size') : specs.find((s) => s.key === key);
    if (!spec) throw new ImageError('bad-argument', `Invalid parameter '${key}' for format '${format}'`);
    bag.set(spec.name, typedValue(spec, key, value));
  }
  return bag;
}

function typedValue(spec: OptionSpec, key: string, value: unknown): string {
  const wrong = (what: string) => new ImageError('bad-argument', `Parameter '${key}' expects ${what}`);
  switch (spec.type) {
    case 'bool':
      if (typeof value !== 'boolean') throw wrong('a boolean');
      return value ? 'on' : 'off';
    case 'size':
    case 'num':
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw wrong('a non-negative integer');
      return String(value);
    case 'str':
      if (typeof value === 'number' && spec.name === 'compat') return value === 2 ? '0.10' : value === 3 ? '1.1' : String(value);
      if (typeof value !== 'string') throw wrong('a string');
      return value;
  }
}

/** A value as qemu_opts_print shows it: sizes and numbers normalised, commas doubled. */
function printValue(o: OptionSpec, v: string): string {
  if (o.type === 'size') return String(parseSize(v) ?? v);
  // qemu prints its unsigned numbers as signed 64-bit ones (2^64 - 1 shows as -1).
  if (o.type === 'num') return /^\d+$/.test(v) ? String(BigInt.asIntN(64, BigInt(v))) : String(Number(v));
  return v.replaceAll(',', ',,');
}

/**
 * The Formatting line straight from the option list, given options plus
 * `defaults` (used where a format's own line cannot be built, and by
 * formats whose line is exactly this).
 */
export function genericCreateLine(format: string, filename: string, bag: OptionBag, defaults: Readonly<Record<string, string>> = {}): string {
  const parts: string[] = [];
  for (const o of allCreateOptions(format)) {
    const v = bag.string(o.name) ?? defaults[o.name];
    if (v !== undefined) parts.push(`${o.name}=${printValue(o, v)}`);
  }
  return `Formatting '${filename}', fmt=${format} ${parts.join(' ')}`;
}

/** The protocol options a format's own line leaves out, as qemu prints them after it. */
export function protocolOptionsTail(bag: OptionBag, names: readonly string[]): string {
  let s = '';
  for (const n of names) {
    const o = FILE_PROTOCOL_OPTIONS.find((x) => x.name === n)!;
    const v = bag.string(n);
    if (v !== undefined) s += ` ${n}=${printValue(o, v)}`;
  }
  return s;
}
