/**
 * qimg convert ... - : the output image written to stdout, front to back
 * (convertToStream), so it can go into a pipe. Options that need a seekable
 * or pre-existing output are refused; progress goes to stderr.
 */
import {
  convertToStream,
  isImageError,
  nodeCodecs,
  parseCreateOptions,
  parseFormatName,
  splitCompressionLevel,
  strerror,
  type Image,
  type OptionBag,
  type StreamConvertOptions,
} from '../../node.js';
import { CliError, err, messageOf, openCli, PROG, Progress } from '../common.js';

export interface StreamConvertArgs {
  srcPaths: string[];
  srcFmt?: string;
  forceShare: boolean;
  outFmt: string;
  compress: boolean;
  optText?: string;
  sparseSize: number;
  parallel: number;
  progress: boolean;
  noCreate: boolean;
  outBase?: string;
  rateLimit: number;
  salvage: boolean;
}

const refuse = (what: string): CliError => new CliError(`${what} is not supported when writing to stdout`);

/** The -o options a streamed output understands; the rest are refused. */
function targetOptions(fmt: 'qcow2' | 'raw', bag: OptionBag): StreamConvertOptions {
  const pre = bag.string('preallocation');
  if (pre !== undefined && pre !== 'off') throw refuse('Preallocation');
  if (fmt === 'raw') return { format: 'raw' };
  if (bag.has('backing_file') || bag.has('backing_fmt')) throw refuse('A backing file');
  if (bag.bool('encryption', false) || bag.has('encrypt.format')) throw refuse('Encryption');
  if (bag.bool('extended_l2', false)) throw refuse('extended_l2');
  if (bag.has('data_file') || bag.bool('data_file_raw', false)) throw refuse('An external data file');
  const compat = bag.string('compat');
  if (compat !== undefined && compat !== '0.10' && compat !== 'v2' && compat !== '1.1' && compat !== 'v3') throw new CliError(`Invalid compatibility level: '${compat}'`);
  const type = bag.string('compression_type') ?? 'zlib';
  if (type !== 'zlib' && type !== 'zstd') throw new CliError(`Parameter 'compression-type' does not accept value '${type}'`);
  return {
    format: 'qcow2',
    clusterSize: bag.size('cluster_size', 65536),
    version: compat === '0.10' || compat === 'v2' ? 2 : 3,
    refcountBits: bag.number('refcount_bits', 16),
    lazyRefcounts: bag.bool('lazy_refcounts', false),
    compressionType: type,
  };
}

/** Run the conversion into stdout; returns the exit code. */
export async function convertToStdout(a: StreamConvertArgs): Promise<number> {
  if (a.noCreate) throw new CliError('-n cannot be used when writing to stdout');
  if (a.outBase !== undefined) throw refuse('A backing file for the output (-B)');
  if (a.rateLimit > 0) throw refuse('A rate limit (-r)');
  if (a.salvage) throw refuse('--salvage');
  const fmt = parseFormatName(a.outFmt);
  if (fmt === undefined) throw new CliError(`Unknown file format '${a.outFmt}'`);
  if (fmt !== 'qcow2' && fmt !== 'raw') throw new CliError(`Writing '${fmt}' to stdout is not supported (qcow2 and raw are)`);
  if (a.compress && fmt !== 'qcow2') throw new CliError('Compression not supported for this file format');
  if (process.stdout.isTTY) throw new CliError('Refusing to write an image to a terminal');
  let target: StreamConvertOptions;
  try {
    const split = a.optText === undefined ? undefined : splitCompressionLevel(a.optText);
    target = { ...targetOptions(fmt, parseCreateOptions(fmt, split?.options)), compressionLevel: split?.level };
  } catch (e) {
    throw e instanceof CliError ? e : new CliError(messageOf(e), 1, { cause: e });
  }

  const meter = new Progress(a.progress, 1.0, (s) => process.stderr.write(s));
  const sources: Image[] = [];
  const controller = new AbortController();
  // Registered ahead of main's EPIPE handler (which exits at once): the reader of the pipe went away.
  const onStdoutError = (e: NodeJS.ErrnoException): void => {
    controller.abort(e);
    err(`${PROG}: error while writing to stdout: ${strerror(e)}\n`);
    process.exitCode = 1;
  };
  process.stdout.prependListener('error', onStdoutError);
  try {
    for (const p of a.srcPaths) sources.push(await openCli(p, { format: a.srcFmt, forceShare: a.forceShare }));
    meter.print(0, 100);
    const stream = convertToStream(sources, {
      ...target,
      compress: a.compress,
      sparseSize: a.sparseSize,
      parallel: a.parallel,
      codecs: nodeCodecs,
      signal: controller.signal,
      onProgress: (done, total) => meter.print(total === 0 ? 100 : (100 * done) / total, 0),
    });
    try {
      await pipeTo(stream, controller.signal);
    } catch (e) {
      if (controller.signal.aborted) return 1;
      if (isImageError(e, 'bad-argument', 'unsupported')) throw new CliError(messageOf(e), 1, { cause: e });
      throw new CliError(`error while converting: ${messageOf(e)}`, 1, { cause: e });
    }
    meter.print(100, 0);
  } finally {
    meter.end();
    process.stdout.off('error', onStdoutError);
    for (const s of sources) await s.close().catch(() => {});
  }
  return 0;
}

/** Write the stream into stdout, waiting for 'drain' whenever stdout's buffer is full. */
async function pipeTo(stream: ReadableStream<Uint8Array>, signal: AbortSignal): Promise<void> {
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      if (!process.stdout.write(value)) {
        await new Promise<void>((resolve) => {
          const go = (): void => {
            process.stdout.off('drain', go);
            signal.removeEventListener('abort', go);
            resolve();
          };
          process.stdout.on('drain', go);
          signal.addEventListener('abort', go);
        });
      }
      if (signal.aborted) throw signal.reason;
    }
  } finally {
    reader.releaseLock();
  }
}
