/**
 * qemu-img's --object: user-creatable objects, of which qimg knows one,
 * `secret` (inline data or a file, raw or base64, optionally AES-256-CBC
 * encrypted with another secret). Every other type is refused: qimg has no
 * use for TLS credentials, throttle groups or the like, and quietly
 * accepting one would suggest it did something.
 */
import { createDecipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isImageError, parseOptions } from '../node.js';
import { CliError, out } from './common.js';

/** qemu's list of user-creatable types: all but secret are refused as unusable here. */
const QEMU_USER_CREATABLE = [
  'authz-list', 'authz-list-file', 'authz-simple', 'main-loop', 'pr-manager-helper', 'secret',
  'secret_keyring', 'thread-context', 'throttle-group', 'tls-cipher-suites', 'tls-creds-anon',
  'tls-creds-psk', 'tls-creds-x509',
];
/** Types qemu knows but qemu-img cannot create (its "invalid object type"). */
const QEMU_OTHER_TYPES = /^(iothread|memory-backend-.*|rng-.*|filter-.*|colo-compare|cryptodev-.*|input-.*|can-.*|dbus-vmstate|sev-guest|x-remote-object|acpi-generic-initiator)$/;

const SECRET_PARAMS = ['data', 'file', 'format', 'iv', 'keyid'];
const SECRET_HELP = 'secret options:\n  data=<string>\n  file=<string>\n  format=<QCryptoSecretFormat>\n  iv=<string>\n  keyid=<string>\n';
const IDENTIFIER = /^[A-Za-z][A-Za-z0-9._-]*$/;

/** qemu's base64 check (qbase64_decode): only the alphabet, '=' and newlines. */
function base64(text: string): Buffer {
  if (!/^[A-Za-z0-9+/=\n\r]*$/.test(text)) throw new CliError('Base64 data contains invalid characters');
  return Buffer.from(text, 'base64');
}

/** GLib's wording for a file g_file_get_contents cannot read. */
function readSecretFile(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'No such file or directory' : code === 'EACCES' ? 'Permission denied' : code === 'EISDIR' ? 'Is a directory' : (e as Error).message;
    const verb = code === 'EISDIR' ? 'Error reading file' : 'Failed to open file';
    throw new CliError(`Unable to read ${path}: ${verb} \u201c${path}\u201d: ${why}`);
  }
}

/** The secrets --object defined, by id; handed to the library as OpenOptions.secrets. */
export class ObjectStore {
  readonly secrets: Record<string, Uint8Array> = {};

  /** `exitCode`: what a bad --object exits with (compare's errors exit 2). */
  constructor(private readonly exitCode = 1) {}

  /**
   * Add one --object argument. Returns true when it asked for help (printed
   * here; qemu-img then exits 0).
   */
  add(text: string): boolean {
    try {
      return this.addObject(text);
    } catch (e) {
      if (e instanceof CliError && e.exitCode !== this.exitCode) throw new CliError(e.message, this.exitCode, { cause: e });
      throw e;
    }
  }

  private addObject(text: string): boolean {
    let props: Map<string, string>;
    let help = false;
    try {
      if (text.startsWith('{')) props = jsonObject(text);
      else {
        const parsed = parseOptions(text, { dialect: 'keyval', impliedKey: 'qom-type' });
        props = new Map(parsed.entries);
        help = parsed.help;
      }
    } catch (e) {
      if (isImageError(e)) throw new CliError(e.message, 1, { cause: e });
      throw e;
    }
    const type = props.get('qom-type');
    if (help) {
      out(type === 'secret' ? SECRET_HELP : 'List of user creatable objects:\n  secret\n');
      return true;
    }
    if (type === undefined) throw new CliError("Parameter 'qom-type' is missing");
    if (type !== 'secret') {
      if (QEMU_USER_CREATABLE.includes(type) || QEMU_OTHER_TYPES.test(type)) throw new CliError(`invalid object type: ${type}`);
      throw new CliError(`Parameter 'qom-type' does not accept value '${type}'`);
    }
    this.addSecret(props);
    return false;
  }

  private addSecret(props: Map<string, string>): void {
    const id = props.get('id');
    if (id === undefined) throw new CliError("Parameter 'id' is missing");
    if (!IDENTIFIER.test(id)) {
      throw new CliError("Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.");
    }
    for (const key of props.keys()) {
      const top = key.split('.')[0]!;
      if (key !== 'qom-type' && key !== 'id' && (!SECRET_PARAMS.includes(key) || top !== key)) throw new CliError(`Parameter '${top}' is unexpected`);
    }
    const format = props.get('format') ?? 'raw';
    if (format !== 'raw' && format !== 'base64') throw new CliError(`Parameter 'format' does not accept value '${format}'`);
    const data = props.get('data');
    const file = props.get('file');
    if (data !== undefined && file !== undefined) throw new CliError("'file' and 'data' are mutually exclusive");
    if (data === undefined && file === undefined) throw new CliError("Either 'file' or 'data' must be provided");
    const input = data !== undefined ? Buffer.from(data, 'utf8') : readSecretFile(file!);
    const keyid = props.get('keyid');
    let value: Uint8Array;
    if (keyid !== undefined) value = this.decrypt(keyid, props.get('iv'), format === 'base64' ? base64(input.toString('latin1')) : input);
    else value = format === 'base64' ? base64(input.toString('latin1')) : input;
    if (Object.prototype.hasOwnProperty.call(this.secrets, id)) throw new CliError(`attempt to add duplicate property '${id}' to object (type 'container')`);
    this.secrets[id] = new Uint8Array(value);
  }

  /** A secret encrypted with secret `keyid` (AES-256-CBC, PKCS#7 padding, base64 IV). */
  private decrypt(keyid: string, ivText: string | undefined, ciphertext: Uint8Array): Uint8Array {
    const key = this.secrets[keyid];
    if (key === undefined) throw new CliError(`No secret with id '${keyid}'`);
    if (key.length !== 32) throw new CliError('Key should be 32 bytes in length');
    if (ivText === undefined) throw new CliError('IV is required to decrypt secret');
    const iv = base64(ivText);
    if (iv.length !== 16) throw new CliError(`IV should be 16 bytes in length not ${iv.length}`);
    if (ciphertext.length % 16 !== 0) throw new CliError(`Length ${ciphertext.length} must be a multiple of block size 16`);
    const d = createDecipheriv('aes-256-cbc', key, iv);
    d.setAutoPadding(false);
    const plain = Buffer.concat([d.update(ciphertext), d.final()]);
    const pad = plain.length > 0 ? plain[plain.length - 1]! : 0;
    if (pad > plain.length) throw new CliError(`Incorrect number of padding bytes (${pad}) found on decrypted data`);
    return plain.subarray(0, plain.length - pad);
  }
}

/** The JSON form: `{"qom-type":"secret","id":"s0","data":"..."}`. */
function jsonObject(text: string): Map<string, string> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new CliError('JSON parse error');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new CliError("Invalid parameter type, expected 'object'");
  const m = new Map<string, string>();
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== 'string') throw new CliError(`Invalid parameter type for '${k}', expected: string`);
    m.set(k, x);
  }
  return m;
}
