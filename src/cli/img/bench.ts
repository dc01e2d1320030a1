/** qemu-img bench: the same options and output lines. */
import { bench } from '../../node.js';
import { parseFormatName } from '../../node.js';
import { type CacheMode, dropsFlushes, flushesEachWrite, parseCacheMode } from '../../node.js';
import { checkImageOptsFormat, CliError, cvtnum, messageOf, openCli, out } from '../common.js';
import { getopt, parseSize, UsageError } from '../options.js';

export const benchHelp = `usage: qimg bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename

Run a simple read or write benchmark on a disk image.
  -c, --count=N          number of requests (default 75000)
  -d, --depth=N          requests in flight (default 64)
  -s, --buffer-size=N    bytes per request (default 4K)
  -S, --step-size=N      distance between requests (default: the buffer size)
  -o, --offset=N         offset of the first request
  -w, --write            write instead of read
  --pattern=N            byte written by write requests (default 0)
  --flush-interval=N     flush after every N requests
  --no-drain             flush without waiting for the requests in flight
  -U, --force-share      read even while another process writes the image (not with -w)
  -t CACHE               cache mode (default writeback; writethrough, directsync:
                         flush after every write; unsafe: flushes do nothing)
  -i AIO, -n             AIO engine (threads, native, io_uring); qimg submits requests
                         its own way, so only native's need for -t none|directsync is checked
  -q                     accepted as by qemu-img, which prints the same lines with it  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

export async function cmdBench(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':hc:d:f:ni:o:qs:S:t:wU', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'count', arg: 'required', key: 'c' },
    { name: 'depth', arg: 'required', key: 'd' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'offset', arg: 'required', key: 'o' },
    { name: 'buffer-size', arg: 'required', key: 's' },
    { name: 'step-size', arg: 'required', key: 'S' },
    { name: 'write', arg: 'none', key: 'w' },
    { name: 'pattern', arg: 'required', key: 'pattern' },
    { name: 'flush-interval', arg: 'required', key: 'flush-interval' },
    { name: 'no-drain', arg: 'none', key: 'no-drain' },
    { name: 'aio', arg: 'required', key: 'i' },
    { name: 'native', arg: 'none', key: 'n' },
    { name: 'cache', arg: 'required', key: 't' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'quiet', arg: 'none', key: 'q' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
  ]);
  let format: string | undefined;
  let imageOpts = false;
  // qemu-img bench's default cache mode.
  let cache: CacheMode = 'writeback';
  let nativeAio = false;
  const o = { count: 75000, depth: 64, bufferSize: 4096, step: 0, offset: 0, write: false, pattern: 0, flushInterval: 0, drain: true };
  const int = (name: string, v: string, min = 1): number => {
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > 0x7fffffff) throw new CliError(`Invalid ${name} specified`);
    return Number(v);
  };
  for (const opt of options) {
    const v = opt.value ?? '';
    switch (opt.key) {
      case 'h':
        out(benchHelp);
        return 0;
      case 'c':
        o.count = int('request count', v);
        break;
      case 'd':
        o.depth = int('queue depth', v);
        break;
      case 'f':
        format = v;
        break;
      case 'o':
        o.offset = cvtnum('offset', v, (t) => parseSize(t));
        break;
      case 's':
        o.bufferSize = cvtnum('buffer size', v, (t) => parseSize(t), 1, 0x7fffffff);
        break;
      case 'S':
        o.step = cvtnum('step size', v, (t) => parseSize(t), 0, 0x7fffffff);
        break;
      case 'w':
        o.write = true;
        break;
      case 'pattern':
        if (!/^\d+$/.test(v) || Number(v) > 0xff) throw new CliError('Invalid pattern byte specified');
        o.pattern = Number(v);
        break;
      case 'flush-interval':
        o.flushInterval = int('flush interval', v, 0);
        break;
      case 'no-drain':
        o.drain = false;
        break;
      case 't': {
        const m = parseCacheMode(v);
        if (m === undefined) throw new CliError('Invalid cache mode');
        cache = m;
        break;
      }
      case 'i':
        if (!['threads', 'native', 'io_uring'].includes(v)) throw new CliError(`Invalid aio option: ${v}`);
        // How requests are submitted changes no result; only qemu's refusal of native AIO without O_DIRECT is kept.
        nativeAio = v === 'native';
        break;
      case 'n':
        nativeAio = true;
        break;
      case 'q':
        // qemu-img 7.2 accepts -q for bench and still prints both lines; so does qimg.
        break;
      case 'image-opts':
        imageOpts = true;
        break;

    }
  }
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  if (o.step === 0) o.step = o.bufferSize;
  if (o.flushInterval > 0 && !o.write) throw new CliError('--flush-interval is only available in write tests');
  if (o.flushInterval > 0 && o.flushInterval < o.depth) throw new CliError("Flush interval can't be smaller than depth");
  // --no-drain without flushes is accepted as qemu-img accepts it: there is no flush to skip draining for.
  const path = operands[0]!;
  checkImageOptsFormat(imageOpts, format);
  if (!imageOpts && format !== undefined && parseFormatName(format) === undefined) throw new CliError(`Could not open '${path}': Unknown driver '${format}'`);
  if (nativeAio && cache !== 'none' && cache !== 'directsync') {
    throw new CliError(`Could not open '${path}': aio=native was specified, but it requires cache.direct=on, which was not specified.`);
  }
  const image = await openCli(path, { format, writable: o.write, unsafe: dropsFlushes(cache), forceShare: options.some((x) => x.key === 'U'), imageOpts, });
  try {
    out(`Sending ${o.count} ${o.write ? 'write' : 'read'} requests, ${o.bufferSize} bytes each, ${o.depth} in parallel (starting at offset ${o.offset}, step size ${o.step})\n`);
    if (o.flushInterval > 0) out(`Sending flush every ${o.flushInterval} requests\n`);
    let ms: number;
    try {
      ms = await bench(image, { ...o, writethrough: flushesEachWrite(cache) }, () => performance.now());
    } catch (e) {
      throw new CliError(`Failed request: ${e instanceof Error ? e.message : String(e)}`);
    }
    out(`Run completed in ${(ms / 1000).toFixed(3)} seconds.\n`);
  } finally {
    await image.close();
  }
  return 0;
}
