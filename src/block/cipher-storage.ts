/**
 * The one place guest data of an encrypted image is encrypted and
 * decrypted: a Storage view over the file that holds the data. Drivers of
 * encrypted images hand this view out as their data storage and in their
 * mappings, so every reader of a mapping (the generic layer, convert, map,
 * a server) and every data write of the driver gets the cipher; metadata
 * goes to the underlying storage, in the clear.
 *
 * Each 512-byte sector is enciphered on its own, its IV taken from its
 * number: the host offset for LUKS in qcow2 and for a raw LUKS volume
 * (relative to the payload), the guest offset for qcow2's legacy AES; the
 * view is made with the difference between the two (`ivOffset`).
 */
import { ImageError } from '../errors.js';
import type { Storage } from '../io/storage.js';
import type { SectorCipher } from '../crypto/sector-cipher.js';

/** Zeros are encrypted a bounded buffer at a time. */
const ZERO_CHUNK = 1 << 20;

export class CipherStorage implements Storage {
  readonly name: string;
  readonly writable: boolean;
  /** Bytes enciphered as one unit (writes come in whole sectors). */
  readonly sectorSize: number;

  /**
   * @param inner the file holding the encrypted sectors
   * @param cipher the volume's sector cipher
   * @param ivOffset added to a host offset to give the offset whose sector number is the IV
   */
  constructor(
    private readonly inner: Storage,
    private readonly cipher: SectorCipher,
    private readonly ivOffset = 0,
  ) {
    this.name = inner.name;
    this.writable = inner.writable;
    this.sectorSize = cipher.sectorSize;
  }

  /** The same file and cipher, with IVs counted from another origin (legacy AES: per mapping). */
  withIvOffset(ivOffset: number): CipherStorage {
    return ivOffset === this.ivOffset ? this : new CipherStorage(this.inner, this.cipher, ivOffset);
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  async read(into: Uint8Array, offset: number): Promise<void> {
    const s = this.sectorSize;
    const start = offset - (offset % s);
    const end = Math.ceil((offset + into.length) / s) * s;
    if (start === offset && end === offset + into.length) {
      await this.inner.read(into, offset);
      await this.cipher.decrypt(this.sectorOf(offset), into);
      return;
    }
    const buf = new Uint8Array(end - start);
    await this.inner.read(buf, start);
    await this.cipher.decrypt(this.sectorOf(start), buf);
    into.set(buf.subarray(offset - start, offset - start + into.length));
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.checkAligned(offset, data.length);
    // The caller's buffer stays plaintext: encrypt a copy.
    const buf = data.slice();
    await this.cipher.encrypt(this.sectorOf(offset), buf);
    await this.inner.write(buf, offset);
  }

  /** Zeroed guest data is encrypted zeros, never plain zeros (which would decrypt to noise). */
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.checkAligned(offset, length);
    for (let pos = 0; pos < length; pos += ZERO_CHUNK) {
      const n = Math.min(ZERO_CHUNK, length - pos);
      const buf = new Uint8Array(n);
      await this.cipher.encrypt(this.sectorOf(offset + pos), buf);
      await this.inner.write(buf, offset + pos);
    }
  }

  truncate(size: number): Promise<void> {
    return this.inner.truncate(size);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  /** The view owns nothing: the driver closes the file itself. */
  async close(): Promise<void> {}

  allocatedSize(): Promise<number | undefined> {
    return this.inner.allocatedSize?.() ?? Promise.resolve(undefined);
  }

  private sectorOf(hostOffset: number): number {
    return (hostOffset + this.ivOffset) / this.sectorSize;
  }

  private checkAligned(offset: number, length: number): void {
    if (offset % this.sectorSize !== 0 || length % this.sectorSize !== 0) {
      throw new ImageError('bad-argument', `Unaligned encrypted write (${length} bytes at ${offset})`);
    }
  }
}
