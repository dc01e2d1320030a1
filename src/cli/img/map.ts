/** qemu-img map, as QEMU 7.2 prints it (no "compressed" member in JSON). */
import { mapImage, type MapEntry } from '../../node.js';
import { checkImageOptsFormat, CliError, cvtnum, openCli, out, outputFormat } from '../common.js';
import { ObjectStore } from '../objects.js';
import { hashHex } from '../format.js';
import { getopt, parseSize, UsageError } from '../options.js';

export const mapHelp = `usage: qimg map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename

Print the allocation map of a disk image, following its backing chain.
  -f, --format=FMT          image format (raw, qcow2, qed); probed when absent
  --output=human|json       output format (default human)
  -s, --start-offset=OFFSET first byte to map (suffixes k, M, G, ...)
  -l, --max-length=LEN      bytes to map from the start offset
  -U, --force-share         open even while another process writes the image  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

export function jsonEntry(e: MapEntry): string {
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) s += `, "offset": ${e.offset}`;
  return s + '}';
}

const col = (s: string): string => s.padEnd(16);

export function humanEntry(e: MapEntry): string {
  if (e.data && e.offset === undefined) throw new CliError('File contains external, encrypted or compressed clusters.');
  if (e.data && !e.zero) return col(hashHex(e.start)) + col(hashHex(e.length)) + col(hashHex(e.offset ?? 0)) + (e.filename ?? '') + '\n';
  return '';
}

export async function cmdMap(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':f:s:l:hU', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'output', arg: 'required', key: 'output' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'start-offset', arg: 'required', key: 's' },
    { name: 'max-length', arg: 'required', key: 'l' },
  ]);
  let format: string | undefined;
  let imageOpts = false;
  const objects = new ObjectStore();
  let output: 'human' | 'json' = 'human';
  let start = 0;
  let maxLength: number | undefined;
  for (const o of options) {
    switch (o.key) {
      case 'h':
        out(mapHelp);
        return 0;
      case 'f':
        format = o.value;
        break;
      case 'output':
        output = outputFormat(o.value!);
        break;
      case 's':
        start = cvtnum('start offset', o.value!, (t) => parseSize(t));
        break;
      case 'l':
        maxLength = cvtnum('max length', o.value!, (t) => parseSize(t));
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
    }
  }
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  checkImageOptsFormat(imageOpts, format);
  const img = await openCli(operands[0]!, { format, forceShare: options.some((o) => o.key === 'U'), imageOpts, secrets: objects.secrets });
  try {
    const human = output === 'human';
    // Output is written per entry: a failure part-way leaves what qemu-img would have printed.
    out(human ? `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n` : '[');
    let prev: MapEntry | undefined;
    const it = mapImage(img, { start, maxLength, human });
    for (;;) {
      let r: IteratorResult<MapEntry>;
      try {
        r = await it.next();
      } catch (e) {
        throw new CliError(`Could not read file metadata: ${e instanceof Error ? e.message : String(e)}`, 1, { cause: e });
      }
      if (r.done) break;
      if (prev) out(human ? humanEntry(prev) : jsonEntry(prev) + ',\n');
      prev = r.value;
    }
    if (prev) out(human ? humanEntry(prev) : jsonEntry(prev) + ']\n');
  } finally {
    await img.close();
  }
  return 0;
}

