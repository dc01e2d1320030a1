/** convertToStream on Node: Node's zlib and zstd unless the caller brings codecs. */
import type { Image } from '../block/image.js';
import { nodeCodecs } from '../io/codecs.js';
import { convertToStream as convertToStreamWith, type StreamConvertOptions } from '../ops/convert-stream.js';

/**
 * The sources (concatenated) as a complete image file of `opts.format`
 * (qcow2 by default, or raw), written front to back with no seeks: to a
 * file, a pipe, an HTTP upload. The caller closes the sources after the
 * stream ends.
 *
 * @example
 * await convertToStream([img], { format: 'qcow2', compress: true }).pipeTo(Writable.toWeb(createWriteStream('out.qcow2')));
 */
export function convertToStream(sources: readonly Image[], opts: StreamConvertOptions = {}): ReadableStream<Uint8Array> {
  return convertToStreamWith(sources, { ...opts, codecs: opts.codecs ?? nodeCodecs });
}
