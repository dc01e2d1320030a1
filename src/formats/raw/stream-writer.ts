/** raw written as a stream: the guest bytes in order; zero runs are not read. */
import { orderedMap } from '../../block/ordered.js';
import type { StreamInput, StreamTargetOptions } from '../../block/stream-target.js';
import { ImageError } from '../../errors.js';

const CHUNK = 1024 * 1024;

async function* pieces(input: StreamInput): AsyncGenerator<{ offset: number; length: number; zero: boolean }> {
  for await (const e of input.extents()) {
    for (let off = 0; off < e.length; off += CHUNK) yield { offset: e.offset + off, length: Math.min(CHUNK, e.length - off), zero: e.zero };
  }
}

export async function* rawStreamWriter(input: StreamInput, opts: StreamTargetOptions): AsyncGenerator<Uint8Array> {
  if (opts.compress) throw new ImageError('unsupported', 'Compression not supported for this file format');
  const read = async (p: { offset: number; length: number; zero: boolean }): Promise<{ buf: Uint8Array; end: number }> => {
    const buf = new Uint8Array(p.length);
    if (!p.zero) await input.read(p.offset, buf);
    return { buf, end: p.offset + p.length };
  };
  for await (const r of orderedMap(pieces(input), Math.max(1, opts.parallel ?? 8), read)) {
    input.checkAborted();
    yield r.buf;
    input.progress(r.end, input.size);
  }
}
