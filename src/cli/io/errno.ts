/** The strerror() text qemu-io prints for a failed request. */
import { isImageError } from '../../node.js';
import { messageOf, strerror } from '../common.js';

const KNOWN_ERRNO_TEXT = new Set([
  'Input/output error',
  'Invalid argument',
  'Operation not supported',
  'Operation not permitted',
  'No space left on device',
  'Numerical result out of range',
  'Permission denied',
]);

/** The block layer's errors carry errno-like meanings; a host failure carries its own errno. */
export function errnoText(e: unknown): string {
  if (isImageError(e, 'io') && e.errno !== undefined) return strerror(e);
  const msg = messageOf(e);
  if (KNOWN_ERRNO_TEXT.has(msg)) return msg;
  if (isImageError(e, 'unsupported')) return 'Operation not supported';
  if (isImageError(e, 'bad-argument')) return 'Invalid argument';
  if (isImageError(e, 'read-only')) return 'Operation not permitted';
  if (isImageError(e, 'io', 'corrupt', 'invalid')) return 'Input/output error';
  return strerror(e);
}
