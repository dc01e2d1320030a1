/**
 * Secrets (qemu's `secret` objects) and the key each layer of an image
 * gets from them. A secret is only looked up when a driver needs it, as
 * qemu does: naming a missing secret for an unencrypted image is no error.
 * Secret bytes never appear in a message.
 */
import { ImageError } from '../errors.js';
import type { DriverContext } from './driver.js';

/** Secrets by id, as the caller gives them (a string is its UTF-8 bytes). */
export type SecretMap = Readonly<Record<string, string | Uint8Array>>;

export const secretBytes = (v: string | Uint8Array): Uint8Array => (typeof v === 'string' ? new TextEncoder().encode(v) : v);

/** The bytes of secret `id`, or qemu's complaint that there is none. */
export function lookupSecret(secrets: SecretMap | undefined, id: string): Uint8Array {
  const v = secrets && Object.prototype.hasOwnProperty.call(secrets, id) ? secrets[id] : undefined;
  if (v === undefined) throw new ImageError('needs-secret', `No secret with id '${id}'`);
  return secretBytes(v);
}

/**
 * The key a driver must have to read or write an encrypted layer: the
 * resolved secret, or qemu's error for a key-secret naming no secret or
 * for none given (`option` is the format's key-secret option name).
 */
export function requireEncryptionKey(ctx: Pick<DriverContext, 'encryptionKey' | 'encryptionKeySecret'>, option: string): Uint8Array {
  if (ctx.encryptionKey) return ctx.encryptionKey;
  if (ctx.encryptionKeySecret !== undefined) throw new ImageError('needs-secret', `No secret with id '${ctx.encryptionKeySecret}'`);
  throw new ImageError('needs-secret', `Parameter '${option}' is required for cipher`);
}
