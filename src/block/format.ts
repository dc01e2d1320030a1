/**
 * A format is one folder that registers one descriptor here: how to open
 * it, its creation options and how to create it, and (where it has them) its
 * consistency check and size measurement. The block layer, ops/ and the CLI
 * dispatch through the descriptor; nothing above formats/ names a format's
 * internals, so a new format is one folder and one registration.
 */
import type { SecretMap } from './secrets.js';
import type { CipherSpec, CryptoProvider } from '../crypto/provider.js';
import { ImageError } from '../errors.js';
import type { Storage } from '../io/storage.js';
import type { Codecs } from './codecs.js';
import type { DriverOpener, ImageFormat } from './driver.js';
import type { Image } from './image.js';
import type { OptionBag } from './options.js';
import type { OptionSpec } from './create-options.js';
import type { CheckResult, RepairMode } from './check.js';
import type { StreamWriter } from './stream-target.js';
import type { SnapshotOps } from './snapshot.js';

/** What creating an image may need from its caller. */
export interface CreateContext {
  codecs: Codecs;
  /** Create (truncate) an external data file the options name (qcow2 data_file). */
  openDataFile?(name: string): Promise<Storage>;
  /** Secrets by id, for options that name one (encrypt.key-secret). */
  secrets?: SecretMap;
  /** Ciphers and key derivation for encrypted images; the portable ones when absent. */
  crypto?: CryptoProvider;
}

/** qemu-img measure's answer (QAPI BlockMeasureInfo). */
export interface MeasureResult {
  /** Bytes the image needs for the given contents (or an empty image of the size). */
  required: number;
  /** Bytes it needs when every cluster is allocated. */
  'fully-allocated': number;
  /** Bytes the source's persistent bitmaps need (qcow2 v3 sources and targets). */
  bitmaps?: number;
}

/** What an amendment may need from its caller. */
export interface AmendContext {
  onProgress?: (done: number, total: number) => void;
  /** Called once the option names and types are accepted, before the format's own checks (qemu-img's meter starts there). */
  onStart?: () => void;
  /**
   * Change the virtual size through the format's resize, the image opened
   * over the same storage with its backing chain and data file. Absent: a
   * size change is refused.
   */
  resize?(newSize: number): Promise<void>;
  /** What qemu prints on stderr on the way (a dirty image's refcount repair), each line ending in a newline. */
  onWarning?: (message: string) => void;
  /** Secrets by id, for options that name one (encrypt.new-secret, encrypt.old-secret). */
  secrets?: SecretMap;
  /** The image's key (the secret its key-secret open option names), which unlocks it before key slots change. */
  encryptionKey?: Uint8Array;
  /** Ciphers and key derivation for encrypted images; the portable ones when absent. */
  crypto?: CryptoProvider;
  /** qemu-img amend --force: allows erasing the last key slot (and overwriting an active one). */
  force?: boolean;
}

export interface FormatDescriptor {
  readonly name: ImageFormat;
  /**
   * Whether the image file holds metadata besides guest data (qcow2, QED;
   * not raw): such a file may be rewritten and grown by a writable open, and
   * nobody else may write it underneath (block/perms.ts).
   */
  readonly hasMetadata: boolean;
  /** Whether images of this format may name a backing file. */
  readonly supportsBacking: boolean;
  /**
   * A new image does not read as zeros (a raw LUKS payload decrypts to
   * noise), so convert writes the source's zeros into it.
   */
  readonly notZeroInitialized?: boolean;
  /** Writes compressed clusters, so an open may set their compression level (OpenOptions.compressionLevel). */
  readonly compresses?: boolean;
  /** Whether the first bytes of a file (up to PROBE_BYTES) are this format's magic. Absent: never probed (raw). */
  probe?(head: Uint8Array): boolean;
  readonly open: DriverOpener;
  /**
   * The open options (qemu's runtime options, --image-opts) this format
   * takes besides `backing.*`, e.g. `encrypt.key-secret`. Absent: none.
   * A key-secret option named here gets its secret resolved into the
   * driver's context (DriverContext.encryptionKey).
   */
  readonly openOptions?: readonly string[];
  /** The -o options of this format, in the order qemu prints them on its Formatting line. */
  readonly createOptions: readonly OptionSpec[];
  /**
   * Check the option values' types and the format's own rules that qemu
   * applies before it prints the Formatting line; returns that line.
   * `bag` holds size (and backing_file, backing_fmt) by now.
   */
  createLine(filename: string, bag: OptionBag): string;
  /**
   * The cipher a new image with these options would encrypt with, when the
   * options name a valid one (otherwise undefined: their errors come from
   * `create`, in qemu's place). Lets a host check that its crypto provider
   * can run the cipher before anything is printed or created.
   */
  createCipher?(bag: OptionBag): CipherSpec | undefined;
  /** Write a new, empty image into `storage` (bdrv_create): the format's checks, then the bytes. */
  create(storage: Storage, bag: OptionBag, ctx: CreateContext): Promise<void>;
  /** One check of an image file, with qemu-img check's repair semantics. Absent: "does not support checks". */
  check?(storage: Storage, repair: RepairMode): Promise<CheckResult>;
  /** Writes a whole image of this format front to back, with no seeks (convertToStream). */
  writeStream?: StreamWriter;
  /** qemu-img measure for this target format. Absent: "does not support size measurement". */
  measure?(bag: OptionBag, source?: Image): Promise<MeasureResult>;
  /** Internal snapshots (qemu-img snapshot, convert -l). Absent: qemu's "not supported" errors. */
  readonly snapshots?: SnapshotOps;
  /**
   * qemu-img amend: change options of the existing image in `storage`
   * (opened writable). Absent: "does not support option amendment".
   */
  amend?(storage: Storage, bag: OptionBag, ctx?: AmendContext): Promise<void>;
  /** The options amend accepts, as `-o help` lists them: [name, type, description]. */
  readonly amendOptions?: ReadonlyArray<readonly [string, string, string]>;
}

const formats = new Map<ImageFormat, FormatDescriptor>();

/** Formats register themselves here (see formats/index.ts). */
export function registerFormat(descriptor: FormatDescriptor): void {
  formats.set(descriptor.name, descriptor);
}

/** The descriptor of a registered format, or undefined. */
export function findFormat(name: string): FormatDescriptor | undefined {
  return formats.get(name as ImageFormat);
}

/** The descriptor of a registered format; qemu's "Unknown driver" otherwise. */
export function formatDescriptor(name: string): FormatDescriptor {
  const d = findFormat(name);
  if (!d) throw new ImageError('unsupported', `Unknown driver '${name}'`);
  return d;
}

/** Names of the registered formats, in registration order. */
export function registeredFormats(): ImageFormat[] {
  return [...formats.keys()];
}
