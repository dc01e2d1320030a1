/**
 * qemu-img amend's key-slot options (state, keyslot, new-secret,
 * old-secret, iter-time), shared by the raw luks format and qcow2's
 * `encrypt.` options: read in qemu's two stages (the -o list's number
 * syntax, then the typed amend request), then applied to a LUKS header
 * with a flush after each write, in the crash-safe order amendLuksSlots
 * gives.
 */
import type { AmendContext } from '../../block/format.js';
import type { OptionBag } from '../../block/options.js';
import { lookupSecret } from '../../block/secrets.js';
import { amendLuksSlots, unlockLuks, type LuksAmendOptions, type LuksHeader, type ReadAt } from '../../crypto/luks.js';
import { portableCrypto } from '../../crypto/portable.js';
import { ImageError } from '../../errors.js';

/** The key-slot options, in the order of qemu's `-o help`. */
export const LUKS_AMEND_HELP: ReadonlyArray<[string, string, string]> = [
  ['iter-time', 'num', 'Time to spend in PBKDF in milliseconds'],
  ['keyslot', 'num', 'Select a single keyslot to modify explicitly'],
  ['new-secret', 'str', 'New secret to set in the matching keyslots. Empty string to erase'],
  ['old-secret', 'str', 'Select all keyslots that match this password'],
  ['state', 'str', 'Select new state of affected keyslots (active/inactive)'],
];

const NUMBERS = new Set(['iter-time', 'keyslot']);

/** The key-slot options as given (names without the prefix), number syntax checked. */
export type LuksAmendText = Partial<Record<'state' | 'keyslot' | 'new-secret' | 'old-secret' | 'iter-time', string>>;

/** C's strtoull/strtoll with base 0 over the whole text: the magnitude and sign, or undefined. */
function cInteger(text: string): { negative: boolean; magnitude: bigint } | undefined {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (!m) return undefined;
  const digits = m[2]!;
  const magnitude = /^0[xX]/.test(digits) ? BigInt(digits) : digits.length > 1 && digits[0] === '0' ? BigInt(`0o${digits.slice(1)}`) : BigInt(digits);
  return { negative: m[1] === '-', magnitude };
}

/**
 * Read the key-slot options (`prefix` is `encrypt.` for qcow2) from the -o
 * list as qemu's option parser does: a number is an unsigned 64-bit C
 * integer (hex and octal too, a minus wraps).
 */
export function readLuksAmendText(bag: OptionBag, prefix = ''): LuksAmendText | undefined {
  let text: LuksAmendText | undefined;
  for (const [name] of LUKS_AMEND_HELP) {
    const key = `${prefix}${name}`;
    if (!bag.has(key)) continue;
    const v = bag.string(key)!;
    if (NUMBERS.has(name)) {
      const n = cInteger(v);
      if (!n) throw new ImageError('bad-argument', `Parameter '${key}' expects a number`);
      if (n.magnitude >= 1n << 64n) throw new ImageError('bad-argument', `Value '${v}' is too large for parameter '${key}'`);
    }
    text = { ...text, [name]: v };
  }
  return text;
}

/** A 64-bit signed option as qemu's typed request reads it. */
function int64(text: string, name: string): bigint {
  const n = cInteger(text)!;
  const v = n.negative ? -n.magnitude : n.magnitude;
  if (v < -(1n << 63n) || v >= 1n << 63n) throw new ImageError('bad-argument', `Parameter '${name}' expects integer`);
  return v;
}

/** Secret ids resolved when the amendment asks for them (qemu looks them up late). */
export interface LuksAmendRequest extends Omit<LuksAmendOptions, 'newSecret' | 'oldSecret'> {
  newSecretId?: string;
  oldSecretId?: string;
}

/**
 * The typed request, with qemu's errors in its order: state (required,
 * active or inactive), then keyslot and iter-time as 64-bit integers. The
 * key slot is then held in a C int, as qemu holds it.
 */
export function luksAmendRequest(t: LuksAmendText, force: boolean): LuksAmendRequest {
  if (t.state === undefined) throw new ImageError('bad-argument', "Parameter 'state' is missing");
  if (t.state !== 'active' && t.state !== 'inactive') throw new ImageError('bad-argument', `Parameter 'state' does not accept value '${t.state}'`);
  const r: LuksAmendRequest = { state: t.state, force };
  if (t['new-secret'] !== undefined) r.newSecretId = t['new-secret'];
  if (t['old-secret'] !== undefined) r.oldSecretId = t['old-secret'];
  if (t.keyslot !== undefined) r.keyslot = Number(BigInt.asIntN(32, int64(t.keyslot, 'keyslot')));
  if (t['iter-time'] !== undefined) {
    const ms = int64(t['iter-time'], 'iter-time');
    r.iterTime = ms < 0n ? -1 : Number(ms);
  }
  return r;
}

/** Where a LUKS header lives: reads and writes relative to its start. */
export interface LuksHeaderIo {
  readAt: ReadAt;
  write(offset: number, data: Uint8Array): Promise<void>;
  flush(): Promise<void>;
}

/**
 * Apply a key-slot request to the LUKS header `io` holds: unlock it with the
 * image's key (ctx.encryptionKey, the key-secret the image was opened
 * with), look secrets up through ctx.secrets, then write each range and
 * flush, in amendLuksSlots' order.
 */
export async function applyLuksAmend(h: LuksHeader, io: LuksHeaderIo, req: LuksAmendRequest, ctx: AmendContext, keyOption: string): Promise<LuksHeader> {
  const crypto = ctx.crypto ?? portableCrypto;
  if (!ctx.encryptionKey) throw new ImageError('needs-secret', `Parameter '${keyOption}' is required for cipher`);
  const { masterKey } = await unlockLuks(h, ctx.encryptionKey, io.readAt, crypto);
  const { newSecretId, oldSecretId, ...rest } = req;
  const opts: LuksAmendOptions = { ...rest };
  if (newSecretId !== undefined) opts.newSecret = () => lookupSecret(ctx.secrets, newSecretId);
  if (oldSecretId !== undefined) opts.oldSecret = () => lookupSecret(ctx.secrets, oldSecretId);
  const result = await amendLuksSlots(h, masterKey, opts, io.readAt, crypto);
  for (const w of result.writes) {
    await io.write(w.offset, typeof w.data === 'function' ? w.data() : w.data);
    await io.flush();
  }
  return result.header;
}
