/**
 * Why an HTTP range source failed, for callers that act on it (retry with
 * another URL, tell the user the server is misconfigured). Messages never
 * carry request headers, so a credential cannot leak into a log.
 */
import { ImageError, type ImageErrorCode } from '../errors.js';

export type HttpFailure =
  /** The server answered a range request with the whole file (status 200): it does not support ranges. */
  | 'no-range'
  /** The body came content-encoded (gzip, br): offsets in it are not offsets in the file. */
  | 'encoded'
  /** The file changed while it was read (its ETag or Last-Modified differs from the first response). */
  | 'changed'
  /** An error status, after retries where retrying made sense. */
  | 'status'
  /** No answer within the timeout. */
  | 'timeout'
  /** The connection failed (after retries). */
  | 'network'
  /** The server's answer contradicts the request (wrong Content-Range, short body). */
  | 'protocol';

export class HttpError extends ImageError {
  readonly failure: HttpFailure;
  /** The HTTP status, when there was one. */
  readonly status?: number;
  constructor(failure: HttpFailure, message: string, opts: { status?: number; cause?: unknown; code?: ImageErrorCode } = {}) {
    super(opts.code ?? 'io', message, { cause: opts.cause });
    this.name = 'HttpError';
    this.failure = failure;
    if (opts.status !== undefined) this.status = opts.status;
  }
}

/** A URL as it may appear in a message: without user, password or query (presigned URLs carry secrets there). */
export function displayUrl(url: string | URL): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    const hadQuery = u.search !== '';
    u.search = '';
    u.hash = '';
    return u.href + (hadQuery ? '?…' : '');
  } catch {
    return '(invalid URL)';
  }
}
