/**
 * A raw LUKS volume (qemu's `luks` format): a LUKS1 header and its key
 * material, then the payload, each 512-byte sector encrypted with the
 * master key and an IV from its number counted from the payload start. The
 * guest is the payload; its size is the file's beyond the payload offset.
 * Without the passphrase only the header can be looked at (info).
 */
import { CipherStorage } from '../../block/cipher-storage.js';
import type { DriverContext, FormatDriver, Mapping, ResizeRequest } from '../../block/driver.js';
import type { DriverInfo } from '../../block/info.js';
import { requireEncryptionKey } from '../../block/secrets.js';
import { parseLuksHeader, unlockLuks, type LuksHeader } from '../../crypto/luks.js';
import { LUKS_HEADER_SIZE, LUKS_SECTOR } from '../../crypto/luks-header.js';
import { portableCrypto } from '../../crypto/portable.js';
import { ImageError } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { luksInfo } from '../../crypto/luks-info.js';

export class LuksDriver implements FormatDriver {
  readonly format = 'luks' as const;
  readonly requestAlignment = LUKS_SECTOR;
  size: number;

  constructor(
    readonly storage: Storage,
    readonly writable: boolean,
    private readonly header: LuksHeader,
    private readonly payload: number,
    size: number,
    /** The payload seen through the cipher; absent when opened without the passphrase. */
    private readonly data: CipherStorage | undefined,
  ) {
    this.size = size;
  }

  private unlocked(): CipherStorage {
    if (!this.data) throw new ImageError('needs-secret', "Parameter 'key-secret' is required for cipher");
    return this.data;
  }

  async getMapping(offset: number, maxLength: number): Promise<Mapping> {
    // Encrypted data: where it lies in the file is not the guest's business (qemu reports no offset).
    return { kind: 'data', length: maxLength, storage: this.unlocked(), hostOffset: this.payload + offset, opaque: true };
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.unlocked().write(data, this.payload + offset);
  }

  /** As qemu's crypto driver: the file's range is discarded (and reads back as whatever the cipher makes of it). */
  async discard(offset: number, length: number): Promise<void> {
    this.unlocked();
    await this.storage.punchHole?.(this.payload + offset, length);
  }

  async resize(newSize: number, req: ResizeRequest): Promise<void> {
    if (req.preallocation !== 'off') throw new ImageError('unsupported', `Unsupported preallocation mode: ${req.preallocation}`);
    this.unlocked();
    await this.storage.truncate(this.payload + newSize);
    this.size = newSize;
  }

  async info(): Promise<DriverInfo> {
    return { encrypted: true, formatSpecific: { type: 'luks', data: { ...luksInfo(this.header) } } };
  }

  async flush(): Promise<void> {
    if (this.writable) await this.storage.flush();
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

export async function openLuks(ctx: DriverContext): Promise<FormatDriver> {
  const { storage } = ctx;
  const metadataOnly = ctx.metadataOnly && !ctx.writable;
  // qemu asks for the key before it reads the header.
  if (!metadataOnly) requireEncryptionKey(ctx, 'key-secret');
  const head = new Uint8Array(LUKS_HEADER_SIZE);
  await storage.read(head, 0);
  const header = parseLuksHeader(head);
  const payload = header.payloadOffsetSectors * LUKS_SECTOR;
  const fileSize = await storage.size();
  if (fileSize < payload) throw new ImageError('invalid', 'LUKS payload is overlapping with the header');
  const size = fileSize - payload - ((fileSize - payload) % LUKS_SECTOR);
  // As qemu-img info: a metadata open never unlocks, even given a key.
  if (metadataOnly) return new LuksDriver(storage, false, header, payload, size, undefined);
  const key = requireEncryptionKey(ctx, 'key-secret');
  const crypto = ctx.crypto ?? portableCrypto;
  const readAt = async (offset: number, length: number): Promise<Uint8Array> => {
    const b = new Uint8Array(length);
    await storage.read(b, offset);
    return b;
  };
  const { cipher } = await unlockLuks(header, key, readAt, crypto);
  return new LuksDriver(storage, ctx.writable, header, payload, size, new CipherStorage(storage, cipher, -payload));
}
