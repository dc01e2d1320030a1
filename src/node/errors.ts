/** The wording qemu-img puts in front of a failure, with the cause's code kept. */
import type { ImageFormat } from '../block/driver.js';
import { parseFormatName } from '../block/probe.js';
import { ImageError, isImageError } from '../errors.js';

export const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** `prefix` + the cause's message, as an ImageError with the cause's code ('io' for anything else). */
export const prefixedError = (prefix: string, e: unknown): ImageError =>
  new ImageError(isImageError(e) ? e.code : 'io', `${prefix}${messageOf(e)}`, { cause: e });

/** qemu's "Could not open 'PATH': ..." */
export const couldNotOpen = (path: string, e: unknown): ImageError => prefixedError(`Could not open '${path}': `, e);

/** A format the caller named for `path`: undefined when none was, qemu's "Unknown driver" when it is not one qimg has. */
export function namedFormat(path: string, name: string | undefined): ImageFormat | undefined {
  if (name === undefined) return undefined;
  const format = parseFormatName(name);
  if (format === undefined) throw new ImageError('unsupported', `Could not open '${path}': Unknown driver '${name}'`);
  return format;
}
