/** qemu-img measure: the size an image of a format needs, for --size N or for a source image. */
import { findFormat, measure, OptionBag, parseCreateOptions, type Image } from '../../node.js';
import { CliError, cvtnum, messageOf, openCli, out, outputFormat } from '../common.js';
import { ObjectStore } from '../objects.js';
import { toQemuJson } from '../json.js';
import { getopt, parseSize } from '../options.js';
import { accumulate } from './create.js';

export const measureHelp = `usage: qimg measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] filename]

Print the size an image of the output format needs.
  -O, --target-format=FMT  raw (default) or qcow2
  -o, --options=OPTIONS    creation options of the output format
  -s, --size=N             measure an empty image of N bytes
  -f, --format=FMT         format of the source image
  -U, --force-share        open even while another process writes the image
  --output=human|json  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

/** Protocol options qemu accepts and measure ignores. */
const IGNORED = new Set(['nocow', 'extent_size_hint']);

export async function cmdMeasure(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':hf:O:o:l:Us:', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'source-image-opts', arg: 'none', key: 'image-opts' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'output', arg: 'required', key: 'output' },
    { name: 'size', arg: 'required', key: 's' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'source-format', arg: 'required', key: 'f' },
    { name: 'target-format', arg: 'required', key: 'O' },
    { name: 'options', arg: 'required', key: 'o' },
    { name: 'target-format-options', arg: 'required', key: 'o' },
    { name: 'snapshot', arg: 'required', key: 'l' },
  ]);
  let fmt: string | undefined;
  let outFmt = 'raw';
  let optText: string | undefined;
  let size: number | undefined;
  let output: 'human' | 'json' = 'human';
  let imageOpts = false;
  const objects = new ObjectStore();
  let snapshot: string | undefined;
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(measureHelp);
        return 0;
      case 'f':
        fmt = v;
        break;
      case 'O':
        outFmt = v;
        break;
      case 'o':
        optText = accumulate(optText, v);
        break;
      case 'l':
        snapshot = v;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'object':
        if (objects.add(v)) return 0;
        break;
      case 'output':
        output = outputFormat(v);
        break;
      case 's':
        size = cvtnum('image size', v, (t) => parseSize(t));
        break;
    }
  }
  if (operands.length > 1) throw new CliError('At most one filename argument is allowed.');
  const filename = operands[0];
  if (filename === undefined && (imageOpts || fmt !== undefined || snapshot !== undefined)) {
    throw new CliError('--image-opts, -f, and -l require a filename argument.');
  }
  if (filename !== undefined && size !== undefined) throw new CliError('--size N cannot be used together with a filename.');
  if (filename === undefined && size === undefined) throw new CliError('Either --size N or one filename must be specified.');
  if (snapshot !== undefined) throw new CliError('Snapshots (-l) are not supported by measure yet');

  let source: Image | undefined;
  try {
    if (filename !== undefined) source = await openCli(filename, { format: fmt, forceShare: options.some((o) => o.key === 'U'), imageOpts, secrets: objects.secrets });
    const target = findFormat(outFmt);
    if (!target) throw new CliError(`Unknown file format '${outFmt}'`);
    if (!target.measure) throw new CliError(`Block driver '${outFmt}' does not support size measurement`);
    try {
      parseCreateOptions(outFmt, optText);
    } catch (e) {
      throw new CliError(`${messageOf(e)}\nqimg: Invalid options for file format '${outFmt}'`);
    }
    // Hand measure only the options it knows; the protocol's are accepted and ignored.
    const given = OptionBag.parse(optText);
    const entries: Array<[string, string]> = [];
    for (const k of ['size', 'preallocation', 'compat', 'cluster_size', 'refcount_bits', 'extended_l2', 'lazy_refcounts', 'compression_type', 'backing_file', 'backing_fmt', 'data_file', 'data_file_raw', 'encryption', 'encrypt.format', 'encrypt.cipher-alg', 'encrypt.cipher-mode', 'encrypt.hash-alg', 'encrypt.iter-time', 'encrypt.ivgen-alg', 'encrypt.ivgen-hash-alg', 'encrypt.key-secret']) {
      if (!IGNORED.has(k) && given.has(k)) entries.push([k, given.string(k)!]);
    }
    let result;
    try {
      result = await measure(outFmt, new OptionBag(entries), size, source);
    } catch (e) {
      throw new CliError(messageOf(e), 1, { cause: e });
    }
    if (output === 'json') {
      const o: Record<string, number> = {};
      if (result.bitmaps !== undefined) o.bitmaps = result.bitmaps;
      o.required = result.required;
      o['fully-allocated'] = result['fully-allocated'];
      out(toQemuJson(o) + '\n');
    } else {
      out(`required size: ${result.required}\nfully allocated size: ${result['fully-allocated']}\n`);
      if (result.bitmaps !== undefined) out(`bitmaps size: ${result.bitmaps}\n`);
    }
  } finally {
    await source?.close().catch(() => {});
  }
  return 0;
}
