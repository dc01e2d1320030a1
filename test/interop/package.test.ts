/**
 * The package as a user gets it: `npm pack` of the repository installed
 * into a fresh project (its install scripts build zstd-napi and the lock
 * addon there), then
 *  - the tarball holds only the published files,
 *  - the types of `qimg` and `qimg/node` resolve under moduleResolution
 *    node16 and bundler,
 *  - every README library example runs against it: `ts example` blocks are
 *    type-checked (strict, module node16) and the JavaScript tsc emits from
 *    them is run, `js example` blocks are run as written; each must exit 0
 *    and print its `// prints:` lines (see test/helpers/readme-examples.ts),
 *  - the bin, zstd compression and image locks work from the install.
 * One test per example, so an example whose API is missing is named.
 */
import { describe, before, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { REPO_ROOT } from '../helpers/cli.js';
import { ensureBuilt } from '../helpers/build.js';
import { documentedFixtures, missingPrint, readmeExamples } from '../helpers/readme-examples.js';
import { npm, packJson, runs, tsc, type PackedFile, type Ran } from '../helpers/npm.js';
import { haveTools, qemuImg, qemuIo, tmpDir } from '../helpers/tools.js';

const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
const examples = readmeExamples(readme);
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };

/** What an install from the tarball needs: the oracle, npm, and a toolchain for node-gyp. */
const missing = [
  ...(haveTools() ? [] : ['qemu-img/qemu-io']),
  ...['npm', 'cc', 'c++', 'make', 'python3'].filter((t) => !runs(t)),
];
if (missing.length && process.env.CI) {
  throw new Error(`the package test needs ${missing.join(', ')} when CI is set (apt-get install qemu-utils g++ make python3)`);
}

const FIXTURES = ['disk.qcow2', 'disk.raw', 'base.qcow2', 'secret.qcow2'];

function ok(r: { status: number | null; stdout: string; stderr: string }, what: string): void {
  assert.equal(r.status, 0, `${what} failed (status ${r.status})\n${r.stdout}\n${r.stderr}`);
}

/** The files every README example finds in its directory, as the README's comment describes them. */
function makeFixtures(dir: string): void {
  const at = (f: string) => join(dir, f);
  ok(qemuImg(['create', '-q', '-f', 'qcow2', at('disk.qcow2'), '64M']), 'qemu-img create disk.qcow2');
  ok(qemuIo(['-c', 'write -P 0x55 0 1M', '-c', 'write -P 0xaa 32M 64k', at('disk.qcow2')]), 'qemu-io write disk.qcow2');
  ok(qemuImg(['convert', '-O', 'raw', at('disk.qcow2'), at('disk.raw')]), 'qemu-img convert disk.raw');
  ok(qemuImg(['create', '-q', '-f', 'qcow2', at('base.qcow2'), '64M']), 'qemu-img create base.qcow2');
  ok(qemuIo(['-c', 'write -P 0x11 0 64k', at('base.qcow2')]), 'qemu-io write base.qcow2');
  const secret = ['--object', 'secret,id=s0,data=example', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10'];
  ok(qemuImg(['create', '-q', '-f', 'qcow2', ...secret, at('secret.qcow2'), '16M']), 'qemu-img create secret.qcow2');
}

/** Runs `node file` in `cwd`; asynchronous so examples can run two at a time. */
function runNode(args: readonly string[], cwd: string, timeoutMs = 60_000): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ status: code ?? 128, stdout, stderr: signal ? `${stderr}\n(killed by ${signal})` : stderr }));
  });
}

async function inParallel<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(Array.from({ length: limit }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) await fn(item);
  }));
}

interface ExampleOutcome {
  /** tsc's diagnostics for this example's file (TS examples). */
  typeErrors: string[];
  run: Ran;
}

interface Installed {
  project: string;
  /** The README's fixture files, pristine. */
  fixtures: string;
  packed: PackedFile[];
  outcomes: Map<string, ExampleOutcome>;
  /** tsc diagnostics that belong to no example (the package's own .d.ts files). */
  otherTypeErrors: string[];
  /** Seconds per phase, reported as a diagnostic: the install dominates. */
  timings: string;
}

/** The compiler options the TS examples are checked with: strict, as a Node ESM project. */
const NODE16 = { strict: true, module: 'node16', moduleResolution: 'node16', target: 'ES2022', lib: ['ES2022'], types: ['node'], skipLibCheck: false };

async function install(): Promise<Installed> {
  const timings: string[] = [];
  let last = performance.now();
  const lap = (phase: string) => {
    const now = performance.now();
    timings.push(`${phase} ${((now - last) / 1000).toFixed(1)} s`);
    last = now;
  };
  ensureBuilt(REPO_ROOT);
  lap('build');
  const work = tmpDir('qimg-package-');
  const project = join(work, 'project');
  mkdirSync(project);

  // --ignore-scripts: prepack's clean rebuild would rewrite dist/ under other test processes; ensureBuilt made it current.
  const packed = await npm(['pack', '--json', '--ignore-scripts', '--pack-destination', work], REPO_ROOT, 120_000);
  ok(packed, 'npm pack');
  const { filename, files } = packJson(packed.stdout);
  lap('pack');

  writeFileSync(
    join(project, 'package.json'),
    JSON.stringify({ name: 'qimg-consumer', private: true, type: 'module', allowScripts: { qimg: true, 'zstd-napi': true, 'fs-ext': true } }, null, 2),
  );
  // @types/node as a TypeScript user of the package installs it, at the repository's version.
  const typesNode = (JSON.parse(readFileSync(join(REPO_ROOT, 'node_modules/@types/node/package.json'), 'utf8')) as { version: string }).version;
  // The fixtures and example files are written while npm installs (it touches only node_modules and package*.json).
  const installing = npm(['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, filename), `@types/node@${typesNode}`], project, 5 * 60_000);

  const fixtures = join(work, 'fixtures');
  mkdirSync(fixtures);
  makeFixtures(fixtures);

  // Each example in its own directory (they write files) under the project, so 'qimg' resolves from its node_modules.
  for (const ex of examples) {
    const dir = join(project, 'examples', ex.name);
    mkdirSync(dir, { recursive: true });
    for (const f of FIXTURES) copyFileSync(join(fixtures, f), join(dir, f));
    writeFileSync(join(dir, `${ex.name}.${ex.lang}`), ex.code);
  }
  ok(await installing, 'npm install of the packed tarball');
  lap('install');

  // One tsc for all TS examples; it emits their JavaScript (types stripped) even where it reports errors.
  const typeErrors = new Map<string, string[]>();
  const otherTypeErrors: string[] = [];
  if (examples.some((e) => e.lang === 'ts')) {
    writeFileSync(join(project, 'tsconfig.examples.json'), JSON.stringify({ compilerOptions: NODE16, include: ['examples/*/*.ts'] }, null, 2));
    const r = tsc(['-p', 'tsconfig.examples.json', '--pretty', 'false'], project);
    for (const line of `${r.stdout}${r.stderr}`.split('\n').filter((l) => / error TS\d+/.test(l))) {
      const owner = /^examples\/([a-z0-9-]+)\//.exec(line)?.[1];
      if (owner) typeErrors.set(owner, [...(typeErrors.get(owner) ?? []), line]);
      else otherTypeErrors.push(line);
    }
  }
  lap('tsc');

  const outcomes = new Map<string, ExampleOutcome>();
  await inParallel(examples, 2, async (ex) => {
    const dir = join(project, 'examples', ex.name);
    const js = `${ex.name}.js`;
    const run = existsSync(join(dir, js)) ? await runNode([js], dir) : { status: -1, stdout: '', stderr: `tsc emitted no ${js}` };
    outcomes.set(ex.name, { typeErrors: typeErrors.get(ex.name) ?? [], run });
  });
  lap('examples');
  return { project, fixtures, packed: files, outcomes, otherTypeErrors, timings: timings.join(', ') };
}

/** Every relative file path under `dir`. */
function filesUnder(dir: string, root = dir): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(join(dir, e.name), root) : [relative(root, join(dir, e.name))],
  );
}

describe('the packed package', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  let installed: Installed;
  before(async () => {
    installed = await install();
  }, { timeout: 8 * 60_000 });

  it('holds only dist (js and d.ts of every source), README, LICENSE, CHANGELOG and the lock addon sources', async (t) => {
    t.diagnostic(`setup: ${installed.timings}`);
    const dry = await npm(['pack', '--dry-run', '--json', '--ignore-scripts'], REPO_ROOT, 120_000);
    ok(dry, 'npm pack --dry-run');
    const listed = packJson(dry.stdout).files.map((f) => f.path).sort();
    assert.deepEqual(listed, installed.packed.map((f) => f.path).sort(), 'the dry run lists what npm pack packed');

    const sources = filesUnder(join(REPO_ROOT, 'src')).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3));
    const allowed = new Set([
      'package.json',
      'README.md',
      'LICENSE',
      'CHANGELOG.md',
      'native/ofdlock/binding.gyp',
      'native/ofdlock/ofdlock.c',
      'native/sectorcrypto/binding.gyp',
      'native/sectorcrypto/sectorcrypto.c',
      ...sources.flatMap((s) => [`dist/${s}.js`, `dist/${s}.d.ts`]),
    ]);
    const extra = listed.filter((f) => !allowed.has(f));
    assert.deepEqual(extra, [], 'files in the tarball that are not published files (a stale dist/ file, tests, maps, build output)');
    const absent = [...allowed].filter((f) => !listed.includes(f));
    assert.deepEqual(absent, [], 'published files missing from the tarball');
  });

  it('documents in the README exactly the fixtures the examples get', () => {
    assert.ok(examples.length >= 5, `README.md has ${examples.length} library examples`);
    assert.deepEqual(documentedFixtures(readme).sort(), [...FIXTURES].sort());
  });

  it('installs with its native parts built: the lock addon and zstd-napi', async () => {
    const { project } = installed;
    const qimgDir = join(project, 'node_modules', 'qimg');
    assert.ok(existsSync(join(qimgDir, 'native/ofdlock/build/Release/ofdlock.node')), 'the install script built native/ofdlock');
    assert.ok(existsSync(join(qimgDir, 'native/sectorcrypto/build/Release/sectorcrypto.node')), 'the install script built native/sectorcrypto');

    // zstd through the installed CLI: it needs zstd-napi's binding; qemu-img reads the result.
    const dir = join(project, 'zstd');
    mkdirSync(dir);
    copyFileSync(join(installed.fixtures, 'disk.raw'), join(dir, 'disk.raw'));
    const bin = join(project, 'node_modules', '.bin', 'qimg');
    const conv = spawnSync(bin, ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'disk.raw', 'zstd.qcow2'], { cwd: dir, encoding: 'utf8' });
    ok(conv, 'qimg convert -c -o compression_type=zstd');
    const info = JSON.parse(qemuImg(['info', '--output=json', join(dir, 'zstd.qcow2')]).stdout) as { 'format-specific': { data: { 'compression-type': string } } };
    assert.equal(info['format-specific'].data['compression-type'], 'zstd');
    ok(qemuImg(['compare', join(dir, 'disk.raw'), join(dir, 'zstd.qcow2')]), 'qemu-img compare of the zstd conversion');
    const map = JSON.parse(qemuImg(['map', '--output=json', join(dir, 'zstd.qcow2')]).stdout) as { data: boolean; offset?: number }[];
    assert.ok(map.some((e) => e.data && e.offset === undefined), 'compressed clusters (qemu-img map gives them no offset)');
  });

  it('takes QEMU image locks from the install: qemu-img is refused an image the library holds for writing', async () => {
    const dir = join(installed.project, 'lock');
    mkdirSync(dir);
    ok(qemuImg(['create', '-q', '-f', 'qcow2', join(dir, 'held.qcow2'), '1M']), 'qemu-img create');
    const holder = spawn(
      process.execPath,
      ['--input-type=module', '-e', "import { openImageFile } from 'qimg/node'; const img = await openImageFile('lock/held.qcow2', { writable: true }); console.log('open'); process.stdin.once('data', () => img.close());"],
      { cwd: installed.project, stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let err = '';
    holder.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve());
        holder.once('exit', (code) => reject(new Error(`the holder exited (${code}) before opening the image: ${err}`)));
      });
      const refused = qemuImg(['info', join(dir, 'held.qcow2')]);
      assert.equal(refused.status, 1, refused.stdout);
      assert.match(refused.stderr, /Failed to get shared "write" lock/);
      assert.doesNotMatch(err, /locking is unavailable/);
    } finally {
      holder.stdin.end('close\n');
      await new Promise((resolve) => holder.once('close', resolve));
    }
  });

  it('runs its bin and exposes package.json', () => {
    const { project } = installed;
    const v = spawnSync(join(project, 'node_modules', '.bin', 'qimg'), ['--version'], { encoding: 'utf8' });
    ok(v, 'qimg --version');
    assert.match(v.stdout, new RegExp(`^qimg version ${pkg.version.replaceAll('.', '\\.')}\\n`));
    const meta = spawnSync(process.execPath, ['-p', "require('qimg/package.json').version"], { cwd: project, encoding: 'utf8' });
    ok(meta, "require('qimg/package.json')");
    assert.equal(meta.stdout.trim(), pkg.version);
    const deep = spawnSync(process.execPath, ['--input-type=module', '-e', "await import('qimg/dist/io/file.js')"], { cwd: project, encoding: 'utf8' });
    assert.notEqual(deep.status, 0, 'modules outside the exports map stay private');
    assert.match(deep.stderr, /ERR_PACKAGE_PATH_NOT_EXPORTED/);
  });

  for (const [label, options] of [
    ['node16', NODE16],
    ['bundler', { ...NODE16, module: 'esnext', moduleResolution: 'bundler' }],
  ] as const) {
    it(`has types for qimg and qimg/node under moduleResolution ${label}`, () => {
      const dir = join(installed.project, `types-${label}`);
      mkdirSync(dir);
      writeFileSync(
        join(dir, 'consumer.ts'),
        [
          "import { MemoryStorage, extents, isImageError, type Image, type ImageErrorCode } from 'qimg';",
          "import { openImageFile } from 'qimg/node';",
          'export const code: ImageErrorCode = "not-found";',
          'export const storage: MemoryStorage = new MemoryStorage();',
          'export async function firstExtent(path: string): Promise<number> {',
          '  const img: Image = await openImageFile(path);',
          '  try {',
          '    for await (const e of extents(img)) return e.length;',
          '    return 0;',
          '  } catch (e) {',
          '    if (isImageError(e, code)) return -1;',
          '    throw e;',
          '  } finally {',
          '    await img.close();',
          '  }',
          '}',
          '',
        ].join('\n'),
      );
      // Wrong types must fail too, or an `any` would pass everything.
      writeFileSync(join(dir, 'wrong.ts'), "import { openImageFile } from 'qimg/node';\n// @ts-expect-error: a path is a string\nvoid openImageFile(42);\n");
      // skipLibCheck: the declaration files are checked once, with the examples.
      writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: { ...options, noEmit: true, skipLibCheck: true }, include: ['*.ts'] }, null, 2));
      const r = tsc(['-p', '.', '--pretty', 'false', '--explainFiles'], dir);
      const errors = r.stdout.split('\n').filter((l) => / error TS\d+/.test(l));
      assert.deepEqual(errors, [], `tsc (${label}) reports errors`);
      assert.equal(r.status, 0, r.stdout);
      for (const entry of ['index', 'node']) {
        assert.match(r.stdout, new RegExp(`node_modules/qimg/dist/${entry}\\.d\\.ts`), `the ${entry} entry's types come from the package's exports`);
      }
    });
  }

  it('has valid declaration files (checked without skipLibCheck)', () => {
    assert.deepEqual(installed.otherTypeErrors, []);
  });

  for (const ex of examples) {
    it(`README example '${ex.name}' (${ex.lang}, README.md:${ex.line})`, () => {
      const outcome = installed.outcomes.get(ex.name);
      assert.ok(outcome, 'the example was not run');
      const { typeErrors, run } = outcome;
      const problems: string[] = [];
      if (typeErrors.length) problems.push(`tsc --strict (module node16):\n  ${typeErrors.join('\n  ')}`);
      if (run.status !== 0) problems.push(`node ${ex.name}.js exited ${run.status}:\n${run.stderr.trim()}`);
      else {
        const absent = missingPrint(run.stdout, ex.prints);
        if (absent !== undefined) problems.push(`expected the line ${JSON.stringify(absent)} (in order) in its output:\n${run.stdout}`);
      }
      if (problems.length) assert.fail(problems.join('\n\n'));
    });
  }
});
