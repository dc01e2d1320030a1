/** LUKS volumes made and read by qemu-img/qemu-io for the crypto tests. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { qemuImg, qemuIo, type RunResult } from './tools.js';

export interface QemuLuksOptions {
  cipherAlg: string;
  cipherMode: string;
  ivgenAlg: string;
  ivgenHashAlg?: string;
  hashAlg: string;
}

export const label = (o: QemuLuksOptions): string =>
  `${o.cipherAlg} ${o.cipherMode}-${o.ivgenAlg}${o.ivgenHashAlg ? `:${o.ivgenHashAlg}` : ''} ${o.hashAlg}`;

/** qemu-img's iter-time calibration error, a matter of timer resolution rather than of the volume. */
export const QEMU_CLOCK_FLAKE = /Unable to get accurate CPU usage/;

export function qemuCreateLuks(dir: string, name: string, o: QemuLuksOptions, size = '1M', password = 'pw'): string {
  const file = join(dir, name);
  const opts = [
    'key-secret=s',
    `cipher-alg=${o.cipherAlg}`,
    `cipher-mode=${o.cipherMode}`,
    `ivgen-alg=${o.ivgenAlg}`,
    ...(o.ivgenHashAlg ? [`ivgen-hash-alg=${o.ivgenHashAlg}`] : []),
    `hash-alg=${o.hashAlg}`,
    'iter-time=10',
  ].join(',');
  const args = ['create', '-q', '-f', 'luks', '--object', `secret,id=s,data=${password}`, '-o', opts, file, size];
  let r = qemuImg(args);
  // qemu's PBKDF2 calibration fails when its CPU clock shows no time passing (a fast hash, a short iter-time).
  for (let retry = 0; retry < 5 && r.status !== 0 && QEMU_CLOCK_FLAKE.test(r.stderr); retry++) r = qemuImg(args);
  if (r.status !== 0) throw new Error(`qemu-img create ${label(o)}: ${r.stderr}`);
  return file;
}

export function qemuIoLuks(file: string, cmd: string, password = 'pw'): RunResult {
  return qemuIo(['--object', `secret,id=s,data=${password}`, '--image-opts', `driver=luks,key-secret=s,file.filename=${file}`, '-c', cmd]);
}

export function readAtFile(file: string): (offset: number, length: number) => Promise<Uint8Array> {
  const bytes = new Uint8Array(readFileSync(file));
  return (offset, length) => Promise.resolve(bytes.slice(offset, Math.min(bytes.length, offset + length)));
}
