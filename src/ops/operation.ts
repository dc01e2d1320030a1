/**
 * What every long operation takes: cancellation through an AbortSignal (the
 * web's and Node's common currency) and progress as (done, total) in bytes.
 */
import { ImageError } from '../errors.js';

export interface OperationOptions {
  /** Cancels the operation; it then rejects with an ImageError of code 'aborted'. */
  signal?: AbortSignal;
  /** Called as work completes: `done` of `total` units (bytes unless the operation says otherwise). */
  onProgress?: (done: number, total: number) => void;
}

/** Throws ImageError('aborted') when `signal` has fired. Call between units of work. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

export function abortError(signal: AbortSignal): ImageError {
  const reason: unknown = signal.reason;
  const why = reason instanceof Error && reason.name !== 'AbortError' ? `: ${reason.message}` : '';
  return new ImageError('aborted', `Operation cancelled${why}`, { cause: reason });
}
