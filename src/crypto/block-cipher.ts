/**
 * One block of a block cipher, in place. The sector modes (modes.ts) build on
 * this so every cipher family gets ECB, CBC, CTR and XTS from one place.
 */
export interface BlockCipher {
  /** 16 for AES, Serpent, Twofish; 8 for CAST5. */
  readonly blockSize: number;
  encryptBlock(buf: Uint8Array, offset: number): void;
  decryptBlock(buf: Uint8Array, offset: number): void;
}

export type CipherFamily = 'aes' | 'serpent' | 'twofish' | 'cast5';

export const readLE32 = (b: Uint8Array, o: number): number =>
  (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;

export function writeLE32(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

export const readBE32 = (b: Uint8Array, o: number): number =>
  ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;

export function writeBE32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}
