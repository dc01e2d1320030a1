/**
 * Which of QEMU's iotests can run without a VM: the ones that use only
 * qemu-img and qemu-io. Derived from each test's text, not a fixed list, so
 * another QEMU version selects its own.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export type Format = 'qcow2' | 'qed' | 'raw';
export const FORMATS: readonly Format[] = ['qcow2', 'qed', 'raw'];

/** What in a test's text means it needs something beyond qemu-img/qemu-io. */
const NEEDS: ReadonlyArray<[RegExp, string]> = [
  [/_launch_qemu|_send_qemu_cmd|QEMU_PROG|\$QEMU\b(?!_)|\bqemu_prog\b/, 'VM'],
  [/iotests\.VM|\bVM\(|QMPTestCase|qmp/i, 'VM/QMP'],
  [/qemu-storage-daemon|QSD_PROG|QemuStorageDaemon|_launch_qsd/, 'storage daemon'],
  [/_qemu_nbd|QEMU_NBD|qemu_nbd|\bnbd\b/i, 'qemu-nbd/NBD'],
];

export interface TestCase {
  /** Name as `check` takes it: `001` or `tests/name` basename. */
  name: string;
  /** Path relative to the iotests directory. */
  path: string;
  formats: Format[];
}

export interface Excluded {
  name: string;
  reason: string;
}

function testFiles(dir: string): string[] {
  const top = readdirSync(dir).filter((f) => /^\d{3}$/.test(f));
  const named = existsSync(join(dir, 'tests')) ? readdirSync(join(dir, 'tests')).filter((f) => !f.includes('.')).map((f) => `tests/${f}`) : [];
  return [...top, ...named].filter((p) => readdirSync(join(dir, p, '..')).some((f) => f.startsWith(p.split('/').pop()! + '.out')));
}

/** The formats among ours a test declares it supports (all when it declares none). */
function supportedFormats(text: string): Format[] {
  let list: string[] | undefined;
  const bash = /^_supported_fmt\s+(.+)$/m.exec(text);
  if (bash) list = bash[1]!.trim().split(/\s+/);
  const py = /supported_fmts\s*=\s*\[([^\]]*)\]/.exec(text);
  if (py) list = [...py[1]!.matchAll(/'([^']+)'|"([^"]+)"/g)].map((m) => m[1] ?? m[2]!);
  const unsupported = /^_unsupported_fmt\s+(.+)$/m.exec(text)?.[1]!.trim().split(/\s+/) ?? [];
  const pyUnsupported = /unsupported_fmts\s*=\s*\[([^\]]*)\]/.exec(text);
  if (pyUnsupported) unsupported.push(...[...pyUnsupported[1]!.matchAll(/'([^']+)'|"([^"]+)"/g)].map((m) => m[1] ?? m[2]!));
  return FORMATS.filter((f) => (list === undefined || list.includes(f) || list.includes('generic')) && !unsupported.includes(f));
}

/** Tests that need only qemu-img and qemu-io, with the formats each runs on. */
export function selectTests(dir: string): { selected: TestCase[]; excluded: Excluded[] } {
  const selected: TestCase[] = [];
  const excluded: Excluded[] = [];
  for (const path of testFiles(dir)) {
    const name = path.split('/').pop()!;
    const text = readFileSync(join(dir, path), 'utf8');
    if (/^#\s*group:.*\bdisabled\b/m.test(text)) {
      excluded.push({ name, reason: 'disabled group' });
      continue;
    }
    const need = NEEDS.find(([re]) => re.test(text));
    if (need) {
      excluded.push({ name, reason: need[1] });
      continue;
    }
    const formats = supportedFormats(text);
    if (formats.length === 0) {
      excluded.push({ name, reason: 'none of qcow2, qed, raw' });
      continue;
    }
    selected.push({ name, path, formats });
  }
  return { selected, excluded };
}

/**
 * The --fast subset: tests that pass with qimg and run in seconds, one or
 * two formats each, so CI covers the harness end to end.
 */
export const FAST: ReadonlyArray<[string, Format]> = [
  ['001', 'raw'],
  ['005', 'qcow2'],
  ['005', 'qed'],
  ['009', 'qcow2'],
  ['010', 'qcow2'],
  ['012', 'qcow2'],
  ['012', 'raw'],
  ['121', 'qcow2'],
  ['134', 'qcow2'],
  ['138', 'qcow2'],
];
