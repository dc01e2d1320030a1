/**
 * QEMU's JSON output, byte for byte: qobject_to_json_pretty over a QDict.
 * A QDict is a 512-bucket hash table iterated bucket by bucket, so member
 * order follows tdb_hash(key) % 512; keys sharing a bucket come out in
 * reverse insertion order (the QAPI visitor inserts in schema order).
 */

export type JsonValue = string | number | boolean | null | undefined | JsonValue[] | { [key: string]: JsonValue } | object;

const QDICT_BUCKET_MAX = 512;

/** qobject/qdict.c tdb_hash, over the key's UTF-8 bytes, all arithmetic mod 2^32. */
export function tdbHash(key: string): number {
  const bytes = new TextEncoder().encode(key);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/** The order QEMU iterates a QDict whose keys were inserted in `keys` order. */
export function qdictOrder(keys: readonly string[]): string[] {
  return keys
    .map((k, i) => ({ k, i, b: tdbHash(k) % QDICT_BUCKET_MAX }))
    .sort((x, y) => x.b - y.b || y.i - x.i)
    .map((e) => e.k);
}

/** Members with value undefined are absent, as QAPI's optional members are. */
function members(obj: object): string[] {
  return Object.keys(obj).filter((k) => (obj as Record<string, unknown>)[k] !== undefined);
}

function quote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    switch (ch) {
      case '"':
        out += '\\"';
        break;
      case '\\':
        out += '\\\\';
        break;
      case '\b':
        out += '\\b';
        break;
      case '\f':
        out += '\\f';
        break;
      case '\n':
        out += '\\n';
        break;
      case '\r':
        out += '\\r';
        break;
      case '\t':
        out += '\\t';
        break;
      default:
        if (cp > 0xffff) {
          out += `\\u${hex4(0xd800 + ((cp - 0x10000) >> 10))}\\u${hex4(0xdc00 + ((cp - 0x10000) & 0x3ff))}`;
        } else if (cp < 0x20 || cp >= 0x7f) {
          out += `\\u${hex4(cp)}`;
        } else {
          out += ch;
        }
    }
  }
  return out + '"';
}

const hex4 = (n: number): string => n.toString(16).toUpperCase().padStart(4, '0');

function scalar(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') {
    if (Number.isInteger(v)) return String(v);
    // QEMU prints doubles with %.17g and trims; qimg has no fractional output today.
    return String(v);
  }
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'string') return quote(v);
  throw new TypeError(`cannot serialise ${typeof v} as JSON`);
}

/**
 * Pretty JSON as QEMU prints it: 4-space indent, `"key": value`, an empty
 * object or array as `{` newline indent `}`. No trailing newline.
 */
export function toQemuJson(value: unknown, opts: { dictOrder?: boolean } = {}): string {
  const dictOrder = opts.dictOrder ?? true;
  let out = '';
  const write = (v: unknown, depth: number): void => {
    const nl = (d: number): string => '\n' + ' '.repeat(4 * d);
    if (Array.isArray(v)) {
      out += '[';
      v.forEach((e, i) => {
        out += (i > 0 ? ',' : '') + nl(depth + 1);
        write(e, depth + 1);
      });
      out += nl(depth) + ']';
    } else if (v !== null && typeof v === 'object') {
      const keys = members(v);
      const ordered = dictOrder ? qdictOrder(keys) : keys;
      out += '{';
      ordered.forEach((k, i) => {
        out += (i > 0 ? ',' : '') + nl(depth + 1) + quote(k) + ': ';
        write((v as Record<string, unknown>)[k], depth + 1);
      });
      out += nl(depth) + '}';
    } else {
      out += scalar(v);
    }
  };
  write(value, 0);
  return out;
}
