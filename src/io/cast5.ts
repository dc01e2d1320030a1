/**
 * CAST5 on Node comes from OpenSSL, which keeps it in its legacy provider:
 * Node loads that provider only when started with --openssl-legacy-provider
 * (on the command line or in NODE_OPTIONS). Without it the cipher is
 * reported unavailable with a stable code, so a caller (the qimg command)
 * can start Node again with the flag; with the flag but no legacy provider
 * in this OpenSSL build it is plainly unsupported.
 */
import { createCipheriv } from 'node:crypto';
import { ImageError } from '../errors.js';

export const LEGACY_PROVIDER_FLAG = '--openssl-legacy-provider';

let available: boolean | undefined;

/** Whether OpenSSL can run CAST5 in this process (probed once). */
export function cast5Available(): boolean {
  if (available === undefined) {
    try {
      createCipheriv('cast5-ecb', Buffer.alloc(16), null);
      available = true;
    } catch {
      available = false;
    }
  }
  return available;
}

/** Whether this process was started asking for OpenSSL's legacy provider. */
export function legacyProviderRequested(): boolean {
  const nodeOptions = (process.env.NODE_OPTIONS ?? '').split(/\s+/);
  return process.execArgv.includes(LEGACY_PROVIDER_FLAG) || nodeOptions.includes(LEGACY_PROVIDER_FLAG);
}

export function requireCast5(): void {
  if (cast5Available()) return;
  if (legacyProviderRequested()) {
    throw new ImageError('unsupported', "Cipher cast5-128 is not supported: this Node's OpenSSL has no legacy provider to load");
  }
  throw new ImageError(
    'cipher-unavailable',
    `Cipher cast5-128 needs OpenSSL's legacy provider: run Node with ${LEGACY_PROVIDER_FLAG} (or set NODE_OPTIONS=${LEGACY_PROVIDER_FLAG})`,
  );
}
