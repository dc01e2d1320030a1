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
  const r = qemuImg(['create', '-q', '-f', 'luks', '--object', `secret,id=s,data=${password}`, '-o', opts, file, size]);
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
