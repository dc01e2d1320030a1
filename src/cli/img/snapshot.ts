/** qemu-img snapshot: list, create, apply or delete a qcow2 image's internal snapshots. */
import { applySnapshotFile, createSnapshotFile, deleteSnapshotFile, isImageError, listSnapshotsFile } from '../../node.js';
import { CliError, imageOperand, err, out } from '../common.js';
import { ObjectStore } from '../objects.js';
import { getopt, UsageError } from '../options.js';
import { snapshotLine } from './info.js';

export const snapshotHelp = `usage: qimg snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename

List, create, apply or delete the internal snapshots of an image (qcow2).
  -l             list the snapshots (the default does nothing)
  -c NAME        create a snapshot NAME of the current contents
  -a ID_OR_NAME  revert the image to a snapshot (by id, then by name)
  -d NAME        delete the first snapshot named NAME
  -q, --quiet    quiet mode
  -U, --force-share  list even while another process writes the image (-l only)  --object OBJDEF       secret,id=ID,data=STRING|file=PATH[,format=raw|base64]: a secret
                         that key-secret options name (the only object type)
  --image-opts          the file name is an option string: driver=FMT,file.filename=PATH,...
`;

type Action = { kind: 'list' } | { kind: 'create' | 'apply' | 'delete'; name: string };

export async function cmdSnapshot(args: string[]): Promise<number> {
  const { options, operands } = getopt(args, ':la:c:d:hqU', [
    { name: 'help', arg: 'none', key: 'h' },
    { name: 'object', arg: 'required', key: 'object' },
    { name: 'image-opts', arg: 'none', key: 'image-opts' },
    { name: 'force-share', arg: 'none', key: 'U' },
  ]);
  let action: Action | undefined;
  let forceShare = false;
  let imageOpts = false;
  const objects = new ObjectStore();
  for (const o of options) {
    const v = o.value ?? '';
    switch (o.key) {
      case 'h':
        out(snapshotHelp);
        return 0;
      case 'l':
      case 'a':
      case 'c':
      case 'd':
        if (action) throw new UsageError("Cannot mix '-l', '-a', '-c', '-d'");
        action = o.key === 'l' ? { kind: 'list' } : { kind: o.key === 'a' ? 'apply' : o.key === 'c' ? 'create' : 'delete', name: v };
        break;
      case 'U':
        forceShare = true;
        break;
      case 'object':
        if (objects.add(o.value!)) return 0;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      default:
        break;
    }
  }
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const { path, format: _named, ...access } = imageOperand(operands[0]!, undefined, { imageOpts, secrets: objects.secrets }, action !== undefined && action.kind !== 'list');
  const opts = { forceShare, onWarning: (m: string) => err(m), ...access };
  try {
    if (action === undefined) {
      // qemu-img opens the image for writing and does nothing.
      await listSnapshotsFile(path, { ...opts, writable: true });
      return 0;
    }
    switch (action.kind) {
      case 'list': {
        const list = await listSnapshotsFile(path, opts);
        if (list.length > 0) out(`Snapshot list:\n${snapshotLine()}\n${list.map((sn) => `${snapshotLine(sn)}\n`).join('')}`);
        break;
      }
      case 'create':
        await createSnapshotFile(path, action.name, opts);
        break;
      case 'apply':
        await applySnapshotFile(path, action.name, opts);
        break;
      case 'delete':
        await deleteSnapshotFile(path, action.name, opts);
        break;
    }
  } catch (e) {
    if (isImageError(e)) throw new CliError(e.message, 1, { cause: e });
    throw e;
  }
  return 0;
}
