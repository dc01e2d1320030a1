/**
 * An image named by qemu's option string (--image-opts, and later the
 * body of a json: filename): `driver=qcow2,file.filename=disk.qcow2,
 * encrypt.key-secret=sec0`. The protocol layer (file.*) and the node's
 * own flags (driver, read-only) are taken apart here; the format's options
 * stay dotted in `blockOptions` for the open path, which checks them
 * against the format once it is known.
 */
import { ImageError } from '../errors.js';
import type { ImageFormat } from './driver.js';
import { parseOptions } from './options.js';
import { parseFormatName } from './probe.js';

export type LockingMode = 'on' | 'off' | 'auto';

export interface OpenTarget {
  /** The image file (file.filename). */
  path: string;
  /** driver=: named, never probed. */
  format?: ImageFormat;
  /** read-only=on: open read-only whatever the command would do. */
  readOnly?: boolean;
  /** file.locking: 'off' takes no image locks (qemu's file.locking=off). */
  locking?: LockingMode;
  /** The format layers' options, dotted as qemu writes them (encrypt.key-secret, backing.encrypt.key-secret). */
  blockOptions: Record<string, string>;
  /** Keys written without a value (key for key=on), which qemu warns about. */
  shortForm: string[];
}

const bool = (key: string, v: string): boolean => {
  if (v === 'on' || v === 'yes' || v === 'true' || v === 'y') return true;
  if (v === 'off' || v === 'no' || v === 'false' || v === 'n') return false;
  throw new ImageError('bad-argument', `Parameter '${key}' expects 'on' or 'off'`);
};

/**
 * Parse an --image-opts string. A bare first word is qemu's implied `file`
 * key, a reference to an existing block node, which qemu-img never has.
 */
export function parseOpenTarget(text: string): OpenTarget {
  const { entries, shortForm } = parseOptions(text, { impliedKey: 'file' });
  const opts = new Map<string, string>();
  for (const [k, v] of entries) opts.set(k, v);
  return openTargetFromOptions(opts, shortForm);
}

/** The same from options already split into keys (a json: body, flattened). */
export function openTargetFromOptions(opts: ReadonlyMap<string, string>, shortForm: string[] = []): OpenTarget {
  const nodeRef = opts.get('file');
  if (nodeRef !== undefined) {
    if ([...opts.keys()].some((k) => k.startsWith('file.'))) {
      throw new ImageError('bad-argument', 'Cannot reference an existing block device with additional options or a new filename');
    }
    throw new ImageError('not-found', `Cannot find device='${nodeRef}' nor node-name='${nodeRef}'`);
  }
  const target: OpenTarget = { path: '', blockOptions: {}, shortForm };
  const driver = opts.get('driver');
  if (driver !== undefined) {
    target.format = parseFormatName(driver);
    if (target.format === undefined) throw new ImageError('unsupported', `Unknown driver '${driver}'`);
  }
  const format = opts.get('driver');
  if (format !== undefined && FOREIGN_DRIVERS.includes(format)) refuseForeign(format);
  const protocol = opts.get('file.driver') ?? 'file';
  if (protocol !== 'file') throw new ImageError('unsupported', `Unknown protocol driver '${protocol}' (qimg opens files only)`);
  const path = opts.get('file.filename');
  if (path === undefined) throw new ImageError('bad-argument', 'A block device must be specified for "file"');
  target.path = path;
  for (const [key, value] of opts) {
    if (key === 'driver' || key === 'file.driver' || key === 'file.filename') continue;
    if (key === 'read-only') target.readOnly = bool(key, value);
    else if (key === 'file.locking') {
      if (value !== 'on' && value !== 'off' && value !== 'auto') throw new ImageError('bad-argument', `invalid parameter value: ${value}`);
      target.locking = value;
    } else if (key.startsWith('file.')) {
      throw new ImageError('bad-argument', `Block protocol 'file' doesn't support the option '${key.slice(5)}'`);
    } else target.blockOptions[key] = value;
  }
  return target;
}

/** A json: body's value as the option string qemu would read (true/false as on/off). */
function scalar(key: string, v: unknown): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return String(v);
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  throw new ImageError('bad-argument', `Invalid parameter type for '${key}', expected: string`);
}

/** Nested objects become dotted keys ({"file":{"filename":"x"}} is file.filename=x), list items numbered keys (a.0.b). */
function flatten(obj: Record<string, unknown> | unknown[], prefix: string, into: Map<string, string>): void {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix + k;
    if (v !== null && typeof v === 'object') flatten(v as Record<string, unknown>, key + '.', into);
    else into.set(key, scalar(key, v));
  }
}

/**
 * Drivers of qemu's that qimg does not have, named in a filename or an
 * option: refused by name rather than taken for a file called "blkdebug:...".
 * (http and https URLs are read by the host as HTTP range sources.)
 */
const FOREIGN_DRIVERS = ['blkdebug', 'blkverify', 'nbd', 'null-co', 'null-aio', 'throttle', 'copy-on-read', 'quorum', 'vvfat', 'nvme', 'ssh'];

function refuseForeign(driver: string): never {
  throw new ImageError('unsupported', `The '${driver}' block driver is not supported by qimg`);
}

/** The options of a `json:{...}` filename, dotted as qemu flattens them. */
export function jsonFilenameOptions(name: string): Map<string, string> {
  let body: unknown;
  try {
    body = JSON.parse(name.slice(5));
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    throw new ImageError('bad-argument', `Could not parse the JSON options: ${reason}`);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new ImageError('bad-argument', 'Invalid JSON object given');
  const opts = new Map<string, string>();
  flatten(body as Record<string, unknown>, '', opts);
  return opts;
}

/**
 * What a filename names, in qemu's filename syntaxes: `json:{...}` (the
 * options of --image-opts as a JSON object, nested or dotted), `file:PATH`,
 * or a plain path. A plain path is `{ path }` with nothing else set.
 */
export function parseImageFilename(name: string): OpenTarget {
  if (name.startsWith('json:')) {
    const opts = jsonFilenameOptions(name);
    // {"driver":"file","filename":...}: the protocol node itself, whose bytes are the image.
    if (opts.get('driver') === 'file') {
      const path = opts.get('filename');
      if (path === undefined) throw new ImageError('bad-argument', "The 'file' block driver requires a file name");
      opts.delete('driver');
      opts.delete('filename');
      const rest = new Map([...opts].map(([k, v]) => ['file.' + k, v]));
      rest.set('file.filename', path);
      return { ...openTargetFromOptions(rest), format: 'raw' };
    }
    return openTargetFromOptions(opts);
  }
  if (name.startsWith('file:')) return { path: name.slice(5), blockOptions: {}, shortForm: [] };
  const protocol = /^([a-z][a-z-]*):/.exec(name)?.[1];
  if (protocol !== undefined && FOREIGN_DRIVERS.includes(protocol)) refuseForeign(protocol);
  return { path: name, blockOptions: {}, shortForm: [] };
}

/** Whether `name` is in a syntax parseImageFilename takes apart (json:, file:, or a driver prefix it refuses). */
export const isSyntacticFilename = (name: string): boolean => /^(json|file|blkdebug|blkverify|nbd|null-co|null-aio|throttle|copy-on-read|quorum|vvfat|nvme|ssh):/.test(name);
