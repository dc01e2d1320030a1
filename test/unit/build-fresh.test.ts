/**
 * The CLI tests run dist/, so they must never run a dist/ compiled from
 * anything but the current sources. These tests drive the freshness check
 * and the rebuild on a tiny project in a temp directory, then check the
 * repository's own build.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'node:test';
import { buildState, ensureBuilt } from '../helpers/build.js';
import { qimgMain, REPO_ROOT } from '../helpers/cli.js';
import { tmpDir } from '../helpers/tools.js';

const TSCONFIG = {
  compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', rootDir: 'src', outDir: 'dist', strict: true, types: [] },
  include: ['src'],
};

/** A project of one source file, never built. */
function project(): string {
  const root = tmpDir('qimg-build-');
  mkdirSync(join(root, 'src'));
  writeFileSync(join(root, 'tsconfig.json'), JSON.stringify(TSCONFIG));
  writeFileSync(join(root, 'src', 'a.ts'), 'export const answer: number = 1;\n');
  return root;
}

const output = (root: string): string => readFileSync(join(root, 'dist', 'a.js'), 'utf8');

/**
 * A stand-in for tsc (which takes seconds to start): copies each source to
 * dist/ as .js and counts its calls. The logic under test only cares that
 * dist/ is rewritten from src/.
 */
function fakeCompiler(): { compile: (root: string) => void; calls: () => number } {
  let n = 0;
  return {
    compile: (root) => {
      n++;
      mkdirSync(join(root, 'dist'), { recursive: true });
      for (const f of readdirSync(join(root, 'src'))) writeFileSync(join(root, 'dist', f.replace(/\.ts$/, '.js')), readFileSync(join(root, 'src', f)));
    },
    calls: () => n,
  };
}

test('without dist/ the build is not current; ensureBuilt compiles it once', () => {
  const root = project();
  const c = fakeCompiler();
  assert.equal(buildState(root).current, false);
  assert.match(buildState(root).reason ?? '', /dist\/ does not exist/);
  assert.equal(ensureBuilt(root, c.compile), true);
  assert.match(output(root), /answer: number = 1/);
  assert.deepEqual(buildState(root), { current: true });
  assert.equal(ensureBuilt(root, c.compile), false, 'a current build is not compiled again');
  assert.equal(c.calls(), 1);
});

test('a changed or added source, or a changed tsconfig, makes dist/ stale; ensureBuilt recompiles', () => {
  const root = project();
  const c = fakeCompiler();
  ensureBuilt(root, c.compile);
  writeFileSync(join(root, 'src', 'a.ts'), 'export const answer: number = 2;\n');
  assert.match(buildState(root).reason ?? '', /src\/ or tsconfig.json changed/);
  assert.equal(ensureBuilt(root, c.compile), true);
  assert.match(output(root), /answer: number = 2/);

  writeFileSync(join(root, 'src', 'b.ts'), 'export const b = 1;\n');
  assert.equal(buildState(root).current, false, 'new file');
  ensureBuilt(root, c.compile);
  writeFileSync(join(root, 'tsconfig.json'), JSON.stringify({ ...TSCONFIG, compilerOptions: { ...TSCONFIG.compilerOptions, target: 'ES2020' } }));
  assert.equal(buildState(root).current, false, 'tsconfig.json');
});

test('only contents count: an older or newer mtime alone does not make dist/ stale', () => {
  const root = project();
  ensureBuilt(root, fakeCompiler().compile);
  utimesSync(join(root, 'src', 'a.ts'), new Date(), new Date(Date.now() + 3_600_000));
  utimesSync(join(root, 'dist', 'a.js'), new Date(0), new Date(0));
  assert.deepEqual(buildState(root), { current: true });
});

test('a dist/ rebuilt by hand from other sources is stale even when src/ is back to what was recorded', () => {
  const root = project();
  const c = fakeCompiler();
  ensureBuilt(root, c.compile);
  // As after `npm run build` on other sources: dist/ changes, the record does not.
  writeFileSync(join(root, 'dist', 'a.js'), 'export const answer = 99;\n');
  assert.match(buildState(root).reason ?? '', /dist\/ changed/);
  assert.equal(ensureBuilt(root, c.compile), true);
  assert.match(output(root), /answer: number = 1/);
});

test('a compile that dies leaves no record: the next check still finds dist/ stale', () => {
  const root = project();
  const c = fakeCompiler();
  ensureBuilt(root, c.compile);
  writeFileSync(join(root, 'src', 'a.ts'), 'export const answer: number = 3;\n');
  assert.throws(() => ensureBuilt(root, (r) => (c.compile(r), assert.fail('compiler crashed'))), /compiler crashed/);
  assert.equal(buildState(root).current, false);
});

test('with the real tsc, a type error fails loudly with tsc output and leaves no record of a build', () => {
  const root = project();
  writeFileSync(join(root, 'src', 'a.ts'), "export const answer: number = 'one';\n");
  assert.throws(() => ensureBuilt(root), /tsc -p tsconfig.json failed[\s\S]*TS2322/);
  // tsc still emits on a type error: that output must not count as current.
  assert.equal(buildState(root).current, false);
});

test('processes that find the same stale build compile it once between them (lock)', async () => {
  const root = project();
  // Each child compiles with a fake that takes 300 ms, so their checks overlap.
  const compile = `(r) => { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300); fs.mkdirSync(r + '/dist', { recursive: true }); fs.writeFileSync(r + '/dist/a.js', fs.readFileSync(r + '/src/a.ts')); }`;
  const script = `const fs = require('node:fs'); import(${JSON.stringify(pathToFileURL(join(REPO_ROOT, 'test', 'helpers', 'build.ts')).href)}).then((m) => console.log(m.ensureBuilt(${JSON.stringify(root)}, ${compile})))`;
  const child = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const c = spawn(process.execPath, ['--import', 'tsx', '-e', script], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      c.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      c.on('error', reject);
      c.on('close', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`child exited ${code}`))));
    });
  const results = await Promise.all([child(), child(), child()]);
  assert.deepEqual(results.sort(), ['false', 'false', 'true']);
  assert.deepEqual(buildState(root), { current: true });
});

test("the repository's dist/ is compiled from its current sources once a CLI test asks for it", () => {
  qimgMain();
  assert.deepEqual(buildState(REPO_ROOT), { current: true });
});
