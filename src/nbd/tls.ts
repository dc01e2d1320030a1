/**
 * TLS for the NBD server, from credentials laid out as qemu's
 * tls-creds-x509 and tls-creds-psk objects read them: a directory with
 * ca-cert.pem, server-cert.pem, server-key.pem (x509), or keys.psk with
 * `username:hexkey` lines (PSK). The upgrade runs after STARTTLS's ACK.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { ImageError } from '../errors.js';
import type { TlsUpgrade } from './handshake.js';

export type NbdTlsCredentials =
  | {
      kind: 'x509';
      /** Directory with ca-cert.pem, server-cert.pem, server-key.pem. */
      dir: string;
      /** Require a client certificate signed by the CA (qemu's verify-peer; default true as in qemu). */
      verifyPeer?: boolean;
      /** Accept only clients whose certificate's distinguished name is exactly this (qemu's authz-simple identity). */
      authzIdentity?: string;
    }
  | {
      kind: 'psk';
      /** Directory with keys.psk. */
      dir: string;
      /** Accept only this PSK username (qemu's authz-simple identity). */
      authzIdentity?: string;
    };

/** Load credentials and return the upgrade serveNbd's `tls` option takes. */
export async function nbdTls(creds: NbdTlsCredentials): Promise<TlsUpgrade> {
  if (creds.kind === 'x509') return x509Upgrade(creds.dir, creds.verifyPeer ?? true, creds.authzIdentity);
  return pskUpgrade(creds.dir, creds.authzIdentity);
}

async function readCred(dir: string, name: string, required: boolean): Promise<Buffer | undefined> {
  try {
    return await readFile(join(dir, name));
  } catch (e) {
    if (!required && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ImageError('not-found', `Unable to access credentials ${join(dir, name)}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : (e as Error).message}`, { cause: e });
  }
}

async function x509Upgrade(dir: string, verifyPeer: boolean, identity: string | undefined): Promise<TlsUpgrade> {
  const ca = await readCred(dir, 'ca-cert.pem', verifyPeer);
  const cert = await readCred(dir, 'server-cert.pem', true);
  const key = await readCred(dir, 'server-key.pem', true);
  const crl = await readCred(dir, 'ca-crl.pem', false);
  const context = createSecureContext({ ca, cert, key, crl });
  return {
    upgrade: (socket) =>
      secure(socket, { secureContext: context, requestCert: verifyPeer, rejectUnauthorized: verifyPeer }, (tls) => {
        if (identity === undefined) return;
        const raw = tls.getPeerCertificate()?.raw;
        const dn = raw ? distinguishedName(new X509Certificate(raw)) : '';
        if (dn !== identity) throw new ImageError('not-permitted', `TLS x509 authz check for ${dn} is denied`);
      }),
  };
}

/** The subject as qemu names a client (gnutls' DN: the certificate's order, comma-separated), which authz identities use. */
function distinguishedName(cert: X509Certificate): string {
  return cert.subject.split('\n').join(',');
}

async function pskUpgrade(dir: string, identity: string | undefined): Promise<TlsUpgrade> {
  const text = (await readCred(dir, 'keys.psk', true))!.toString('utf8');
  const keys = new Map<string, Buffer>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) keys.set(line.slice(0, i), Buffer.from(line.slice(i + 1).trim(), 'hex'));
  }
  const context: SecureContext = createSecureContext({ ciphers: 'PSK:ECDHE-PSK:DHE-PSK:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256' });
  return {
    upgrade: (socket) =>
      secure(socket, {
        secureContext: context,
        pskCallback: (_s: TLSSocket, id: string) => (identity !== undefined && id !== identity ? null : (keys.get(id) ?? null)),
      } as ConstructorParameters<typeof TLSSocket>[1]),
  };
}

/** Wrap `socket` in server-side TLS; resolves once the handshake (and `check`) passed. */
function secure(socket: Duplex, opts: ConstructorParameters<typeof TLSSocket>[1], check?: (tls: TLSSocket) => void): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const tls = new TLSSocket(socket as never, { ...opts, isServer: true });
    const fail = (e: Error): void => {
      tls.destroy();
      socket.destroy();
      reject(e);
    };
    tls.once('error', fail);
    tls.once('secure', () => {
      try {
        check?.(tls);
      } catch (e) {
        return fail(e as Error);
      }
      tls.off('error', fail);
      tls.on('error', () => {});
      resolve(tls);
    });
  });
}
