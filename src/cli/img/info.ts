/** qemu-img info, as QEMU 7.2 prints it (ImageInfo, no child nodes). */
import { isRemoteName, parseOpenTarget, type ImageInfo, type OpenTarget, type SnapshotInfo } from '../../node.js';
import { checkImageOptsFormat, CliError, openCli, out, outputFormat, type ImageAccess } from '../common.js';
import { ObjectStore } from '../objects.js';
import { sizeToStr } from '../format.js';
import { qdictOrder, toQemuJson } from '../json.js';
import { getopt, UsageError } from '../options.js';

export const infoHelp = `usage: qimg info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename

Print information about a disk image.
  -f, --format=FMT     image format (raw, qcow2, qed); probed when absent
  --output=human|json  output format (default human)
  --backing-chain      show every image of the backing chain, top first
  -U, --force-share    open even while another process writes the image  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

/** The ImageInfo of one image as qemu-img 7.2 reports it. */
export async function imageInfo(path: string, format: string | undefined, forceShare = false, access: ImageAccess = {}): Promise<ImageInfo> {
  const img = await openCli(path, { format, backing: false, metadataOnly: true, forceShare, ...access });
  try {
    const info = await img.info();
    if (access.imageOpts) info.filename = nodeName(parseOpenTarget(path), img.format);
    // qemu-img 7.2 reports dirty-flag for every format whose driver answers bdrv_get_info.
    if (info['dirty-flag'] === undefined && !isRemoteName(info.filename)) info['dirty-flag'] = false;
    return info;
  } finally {
    await img.close();
  }
}

/**
 * The name qemu gives an image opened with format options: its options as
 * json: (the file alone when there are none).
 */
function nodeName(t: OpenTarget, format: string): string {
  const opts = Object.entries(t.blockOptions);
  if (opts.length === 0) return t.path;
  // qemu prints its options dictionary in hash order.
  const values = new Map<string, string>([...opts.map(([k, v]): [string, string] => [k, JSON.stringify(v)]), ['driver', JSON.stringify(format)], ['file', `{"driver": "file", "filename": ${JSON.stringify(t.path)}}`]]);
  return `json:{${qdictOrder([...values.keys()]).map((k) => `${JSON.stringify(k)}: ${values.get(k)!}`).join(', ')}}`;
}

/** Walk a backing chain by name, top first, as qemu-img's collect_image_info_list does. */
export async function collectInfo(path: string, format: string | undefined, chain: boolean, forceShare = false, access: ImageAccess = {}): Promise<ImageInfo[]> {
  const seen = new Set<string>();
  const list: ImageInfo[] = [];
  let filename: string | undefined = path;
  let fmt = format;
  while (filename !== undefined) {
    if (seen.has(filename)) throw new CliError(`Backing file '${filename}' creates an infinite loop.`);
    seen.add(filename);
    // --image-opts names the top image only; the chain below is opened by name.
    const info = await imageInfo(filename, fmt, forceShare, list.length === 0 ? access : { secrets: access.secrets });
    list.push(info);
    filename = undefined;
    fmt = undefined;
    if (chain) {
      if (info['full-backing-filename'] !== undefined) filename = info['full-backing-filename'];
      else if (info['backing-filename'] !== undefined) {
        throw new CliError(`Could not determine absolute backing filename, but backing filename '${info['backing-filename']}' present`);
      }
      if (info['backing-filename-format'] !== undefined) fmt = info['backing-filename-format'];
    }
  }
  return list;
}

const pad2 = (n: number): string => String(n).padStart(2, '0');

/** block/qapi.c bdrv_snapshot_dump (7.2 layout); header when `sn` is absent. */
export function snapshotLine(sn?: SnapshotInfo): string {
  if (!sn) {
    return 'ID'.padEnd(10) + 'TAG'.padEnd(17) + 'VM SIZE'.padStart(8) + 'DATE'.padStart(20) + 'VM CLOCK'.padStart(13) + 'ICOUNT'.padStart(11);
  }
  const d = new Date(sn['date-sec'] * 1000);
  const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const nsec = sn['vm-clock-sec'] * 1e9 + sn['vm-clock-nsec'];
  const secs = Math.floor(nsec / 1e9);
  const clock = `${pad2(Math.floor(secs / 3600))}:${pad2(Math.floor(secs / 60) % 60)}:${pad2(secs % 60)}.${String(Math.floor(nsec / 1e6) % 1000).padStart(3, '0')}`;
  const icount = sn.icount === undefined ? '' : String(sn.icount);
  return (
    sn.id.padEnd(9) + ' ' + sn.name.padEnd(16) + ' ' + sizeToStr(sn['vm-state-size']).padStart(8) + date.padStart(20) + clock.padStart(13) + icount.padStart(11)
  );
}

/** block/qapi.c dump_qobject: nested keys indented 4 spaces, '-' shown as ' ', lists as [i]. */
export function dumpQObject(value: unknown, indent: number): string {
  const pad = ' '.repeat(indent * 4);
  const composite = (v: unknown): boolean => v !== null && typeof v === 'object';
  let s = '';
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      s += `${pad}[${i}]:${composite(v) ? '\n' : ' '}` + dumpQObject(v, indent + 1);
    });
  } else if (value !== null && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    for (const k of qdictOrder(Object.keys(obj).filter((k) => obj[k] !== undefined))) {
      const v = obj[k];
      s += `${pad}${k.replace(/-/g, ' ')}:${composite(v) ? '\n' : ' '}` + dumpQObject(v, indent + 1);
    }
  } else {
    s += `${typeof value === 'boolean' ? (value ? 'true' : 'false') : String(value)}\n`;
  }
  return s;
}

/** block/qapi.c bdrv_image_info_dump. */
export function humanInfo(info: ImageInfo): string {
  let s = `image: ${info.filename}\nfile format: ${info.format}\n`;
  s += `virtual size: ${sizeToStr(info['virtual-size'])} (${info['virtual-size']} bytes)\n`;
  s += `disk size: ${info['actual-size'] === undefined ? 'unavailable' : sizeToStr(info['actual-size'])}\n`;
  if (info.encrypted) s += 'encrypted: yes\n';
  if (info['cluster-size'] !== undefined) s += `cluster_size: ${info['cluster-size']}\n`;
  if (info['dirty-flag']) s += 'cleanly shut down: no\n';
  if (info['backing-filename'] !== undefined) {
    s += `backing file: ${info['backing-filename']}`;
    if (info['full-backing-filename'] === undefined) s += ' (cannot determine actual path)';
    else if (info['full-backing-filename'] !== info['backing-filename']) s += ` (actual path: ${info['full-backing-filename']})`;
    s += '\n';
  }
  if (info['backing-filename-format'] !== undefined) s += `backing file format: ${info['backing-filename-format']}\n`;
  if (info.snapshots) {
    s += 'Snapshot list:\n' + snapshotLine() + '\n';
    for (const sn of info.snapshots) s += snapshotLine(sn) + '\n';
  }
  if (info['format-specific']) {
    s += 'Format specific information:\n' + dumpQObject(info['format-specific'].data, 1);
  }
  return s;
}

export async function cmdInfo(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':f:hU', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'format', arg: 'required', key: 'f' },
    { name: 'backing-chain', arg: 'none', key: 'backing-chain' },
    { name: 'force-share', arg: 'none', key: 'U' },
    { name: 'output', arg: 'required', key: 'output' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'object', arg: 'required', key: 'object' },
  ]);
  let format: string | undefined;
  let output: 'human' | 'json' = 'human';
  let chain = false;
  let imageOpts = false;
  const objects = new ObjectStore();
  for (const o of options) {
    switch (o.key) {
      case 'h':
        out(infoHelp);
        return 0;
      case 'f':
        format = o.value;
        break;
      case 'backing-chain':
        chain = true;
        break;
      case 'output':
        output = outputFormat(o.value!);
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
  const list = await collectInfo(operands[0]!, format, chain, options.some((o) => o.key === 'U'), { imageOpts, secrets: objects.secrets });
  if (output === 'json') {
    out(toQemuJson(chain ? list : list[0]) + '\n');
  } else {
    out(list.map(humanInfo).join('\n'));
  }
  return 0;
}
