/**
 * Image management across the interop corpus: every image qemu-img and
 * qemu-io made there (qcow2 v2/v3 of every cluster size and refcount width,
 * compressed, extended L2, external data files, internal snapshots,
 * bitmaps, preallocation, QED, raw, backing chains) gets each management
 * command from qemu-img and from qimg, on twin copies of the image and the
 * files it depends on. Whether the command applies or not, the two runs
 * print the same stdout, stderr and exit code; where it succeeds, every
 * file of the twins has the same info (snapshot dates and host sizes
 * aside), the same `qemu-img check` result and the same guest content.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { after, describe as suite, test } from 'node:test';
import { buildCorpus, describe, makeTempDir, qemuToolsMissing, qimg, removeDir, runAsync, type CorpusImage, type RunResult } from '../helpers/corpus.js';
import { asQemu } from '../helpers/tools.js';

const TIMEOUT = 60_000;
const qemuImg = (args: readonly string[], cwd: string): Promise<RunResult> => runAsync('qemu-img', args, { cwd, timeout: TIMEOUT });

/** What a command's applicability depends on. */
interface Traits {
  format: string;
  backed: boolean;
  v2: boolean;
}

/**
 * The commands, with IMG standing for the image's name in its directory,
 * run on the images they apply to and, for their refusals, on the first
 * image of each other kind.
 */
const COMMANDS: Array<{ name: string; args: string[]; outputs?: string[]; writesChain?: boolean; applies: (t: Traits) => boolean }> = [
  { name: 'resize grow', args: ['resize', 'IMG', '+1M'], applies: () => true },
  { name: 'resize shrink', args: ['resize', '--shrink', 'IMG', '-64k'], applies: () => true },
  { name: 'snapshot -c', args: ['snapshot', '-c', 'snap-new', 'IMG'], applies: (t) => t.format === 'qcow2' },
  { name: 'snapshot -l', args: ['snapshot', '-l', 'IMG'], applies: (t) => t.format === 'qcow2' },
  { name: 'amend compat=0.10', args: ['amend', '-o', 'compat=0.10', 'IMG'], applies: (t) => t.format === 'qcow2' && !t.v2 },
  { name: 'amend compat=1.1,lazy_refcounts=on', args: ['amend', '-o', 'compat=1.1,lazy_refcounts=on', 'IMG'], applies: (t) => t.format === 'qcow2' },
  { name: 'bitmap --add', args: ['bitmap', '--add', '-g', '65536', 'IMG', 'bm-new'], applies: (t) => t.format === 'qcow2' && !t.v2 },
  { name: 'rebase -u -b ""', args: ['rebase', '-u', '-b', '', 'IMG'], applies: (t) => t.backed },
  { name: 'rebase -b "" (flatten)', args: ['rebase', '-b', '', 'IMG'], applies: (t) => t.backed },
  { name: 'commit', args: ['commit', 'IMG'], writesChain: true, applies: (t) => t.backed },
  { name: 'dd to qcow2', args: ['dd', '-O', 'qcow2', 'bs=4k', 'skip=3', 'count=100', 'if=IMG', 'of=dd-out.qcow2'], outputs: ['dd-out.qcow2'], applies: () => true },
];

const missing = qemuToolsMissing();
if (missing && process.env.CI) throw new Error(`${missing} (CI is set: the interop tests must run)`);

const root = missing ? '' : makeTempDir('qimg-manage-');
after(() => {
  if (root) removeDir(root);
});
const corpusDir = root && join(root, 'corpus');
let corpus: CorpusImage[] = [];
if (root) {
  mkdirSync(corpusDir);
  corpus = buildCorpus(corpusDir, { huge: false });
}

/** The image and every file it reads (backing chain, external data files), relative to the corpus; and its traits. */
async function dependencies(image: CorpusImage): Promise<{ files: string[]; traits: Traits }> {
  const r = await qemuImg(['info', '-U', '--backing-chain', '--output=json', relative(corpusDir, image.path)], corpusDir);
  assert.equal(r.status, 0, describe(r));
  const chain = JSON.parse(r.stdout) as Array<{ filename: string; format: string; 'format-specific'?: { data?: { 'data-file'?: string; compat?: string } } }>;
  const files = new Set<string>();
  for (const layer of chain) {
    files.add(relative(corpusDir, join(corpusDir, layer.filename)));
    const dataFile = layer['format-specific']?.data?.['data-file'];
    if (dataFile) files.add(relative(corpusDir, join(corpusDir, dirname(layer.filename), dataFile)));
  }
  const top = chain[0]!;
  return { files: [...files], traits: { format: top.format, backed: chain.length > 1, v2: top['format-specific']?.data?.compat === '0.10' } };
}

/** The guest content of `file` as seen from its own directory (names of backing and data files resolve there). */
async function rawCopy(dir: string, file: string): Promise<Buffer> {
  const out = join(dir, '.content.raw');
  const r = await qemuImg(['convert', '-U', '-O', 'raw', file, out], dir);
  assert.equal(r.status, 0, `convert of ${file}: ${describe(r)}`);
  const b = readFileSync(out);
  rmSync(out);
  return b;
}

/** info as compared: host usage and snapshot creation times differ between any two runs. */
async function normalisedInfo(dir: string, file: string): Promise<unknown> {
  const r = await qemuImg(['info', '-U', '--output=json', file], dir);
  assert.equal(r.status, 0, `info of ${file}: ${describe(r)}`);
  const info = JSON.parse(r.stdout) as Record<string, unknown>;
  delete info['actual-size'];
  for (const sn of (info.snapshots as Array<Record<string, unknown>> | undefined) ?? []) {
    delete sn['date-sec'];
    delete sn['date-nsec'];
  }
  return info;
}

/**
 * What differs between any two runs: snapshot -l's creation dates, and
 * the block layer's numbered node names ('#block123') in qemu's messages.
 */
const mask = (s: string): string => s.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, 'DATE').replace(/#block\d+/g, '#blockN');

/** The first image of each format and qcow2 version gets the commands that do not apply to it, for their refusals. */
const refusalsOn = new Set<string>();

// Images run three at a time: most of the time goes to starting processes.
suite('manage', { concurrency: 3 }, () => {
for (const image of corpus) {
  test(`manage: ${image.name}`, { concurrency: 1, timeout: 600_000 }, async (t) => {
    const { files: deps, traits } = await dependencies(image);
    const name = relative(corpusDir, image.path);
    const kind = `${traits.format}${traits.v2 ? ' v2' : ''}${traits.backed ? ' backed' : ''}`;
    const refusals = !refusalsOn.has(kind);
    refusalsOn.add(kind);
    for (const cmd of COMMANDS.filter((c) => refusals || c.applies(traits))) {
      await t.test(cmd.name, async () => {
        const dir = join(root, `${image.name.replace(/[^A-Za-z0-9]+/g, '_')}-${cmd.name.replace(/[^A-Za-z0-9]+/g, '_')}`);
        const twins = { qemu: join(dir, 'qemu'), ours: join(dir, 'ours') };
        for (const side of Object.values(twins)) {
          for (const f of deps) {
            mkdirSync(dirname(join(side, f)), { recursive: true });
            copyFileSync(join(corpusDir, f), join(side, f));
          }
        }
        const args = cmd.args.map((a) => a.replaceAll('IMG', name));
        const theirs = await qemuImg(args, twins.qemu);
        const ours = await qimg(args, { cwd: twins.ours, timeout: TIMEOUT });
        const what = `${args.join(' ')}\nqemu-img: ${describe(theirs)}\nqimg: ${describe(ours)}`;
        assert.equal(ours.status, theirs.status, `exit code of ${what}`);
        assert.equal(mask(ours.stdout), mask(theirs.stdout), `stdout of ${what}`);
        assert.equal(mask(asQemu(ours.stderr)), mask(theirs.stderr), `stderr of ${what}`);
        // Only commit writes into the files an image depends on; the others touch the image and their outputs.
        for (const f of [...(cmd.writesChain ? deps : [name]), ...(cmd.outputs ?? [])]) {
          if (!existsSync(join(twins.qemu, f))) {
            assert.equal(existsSync(join(twins.ours, f)), false, `${f} made by qimg only`);
            continue;
          }
          assert.deepEqual(await normalisedInfo(twins.ours, f), await normalisedInfo(twins.qemu, f), `info of ${f} after ${args.join(' ')}`);
          const [checkOurs, checkTheirs] = await Promise.all([qemuImg(['check', '-U', f], twins.ours), qemuImg(['check', '-U', f], twins.qemu)]);
          // qemu leaks a cluster when a snapshot fails for want of refcount width; qimg leaks none (3 is "leaks only").
          const leakOnlyTheirs = checkTheirs.status === 3 && checkOurs.status === 0;
          assert.ok(checkOurs.status === checkTheirs.status || leakOnlyTheirs, `check of ${f} after ${args.join(' ')}:\n${describe(checkOurs)}`);
          const [a, b] = await Promise.all([rawCopy(twins.ours, f), rawCopy(twins.qemu, f)]);
          assert.ok(a.equals(b), `content of ${f} after ${args.join(' ')} differs`);
        }
        removeDir(dir);
      });
    }
  });
}
});
