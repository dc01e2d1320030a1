/**
 * npm run iotests [-- options]: QEMU's qemu-iotests against the real tools
 * and against qimg, side by side.
 *
 *   --fast              the CI subset (see FAST in select.ts); exit 1 unless all pass with qimg
 *   --tests a,b         only these tests
 *   --formats f,g       only these formats (qcow2, qed, raw)
 *   --tools real|qimg|img-only  only one toolset (img-only: qimg as qemu-img, the real qemu-io)
 *   --jobs N            cases run at once (default 2)
 *   --timeout S         seconds per case (default 300)
 *   --no-docs           do not rewrite docs/iotests.md
 *   --report-only       run nothing: rewrite docs/iotests.md from the kept results
 *
 * Each toolset's results are kept (results-<tools>.json); a run of one
 * toolset takes the other's column from its last full run, so the real
 * tools' baseline need not be rerun while qimg changes.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureSuite } from './fetch.js';
import { CACHE_DIR, REPO_ROOT } from './paths.js';
import { markdown, rowsOf, summary, textTable } from './report.js';
import { runCase, type CaseResult } from './run-case.js';
import { FAST, FORMATS, selectTests, type Format } from './select.js';
import { prepareTools, type Tools, type Toolset } from './tools.js';

const { values } = parseArgs({
  options: {
    fast: { type: 'boolean', default: false },
    tests: { type: 'string' },
    formats: { type: 'string' },
    tools: { type: 'string' },
    jobs: { type: 'string', default: '2' },
    timeout: { type: 'string', default: '300' },
    'no-docs': { type: 'boolean', default: false },
    'report-only': { type: 'boolean', default: false },
  },
});

const log = (s: string): void => {
  process.stderr.write(s);
};

const CAUSES_START = '<!-- causes -->';
const CAUSES_END = '<!-- /causes -->';

/** The hand-written analysis of failures in docs/iotests.md, kept across runs. */
function keptCauses(docPath: string): string {
  const fallback = `${CAUSES_START}\n${CAUSES_END}\n`;
  if (!existsSync(docPath)) return fallback;
  const text = readFileSync(docPath, 'utf8');
  const a = text.indexOf(CAUSES_START);
  const b = text.indexOf(CAUSES_END);
  return a >= 0 && b > a ? text.slice(a, b + CAUSES_END.length) + '\n' : fallback;
}

async function pool<T>(items: T[], jobs: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, jobs) }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

async function main(): Promise<number> {
  if (!values['report-only']) {
    const build = spawnSync('npm', ['run', '-s', 'build'], { cwd: REPO_ROOT, stdio: 'inherit' });
    if (build.status !== 0) return 1;
  }
  const { dir, version } = ensureSuite(log);
  const { selected, excluded } = selectTests(dir);
  const wantTests = values.tests?.split(',');
  const wantFormats = (values.formats?.split(',') ?? FORMATS) as Format[];
  const toolsets: Toolset[] = values['report-only'] ? [] : values.tools ? [values.tools as Toolset] : ['real', 'qimg'];
  const tools: Partial<Record<Toolset, Tools>> = {};
  for (const t of toolsets) tools[t] = prepareTools(t);

  let cases: Array<{ name: string; path: string; format: Format }> = [];
  if (values.fast) {
    for (const [name, format] of FAST) {
      const tc = selected.find((s) => s.name === name);
      if (tc) cases.push({ name, path: tc.path, format });
    }
  } else {
    for (const tc of selected) {
      if (wantTests && !wantTests.includes(tc.name)) continue;
      for (const format of tc.formats) if (wantFormats.includes(format)) cases.push({ name: tc.name, path: tc.path, format });
    }
  }
  const resultDir = join(CACHE_DIR, 'results');
  mkdirSync(resultDir, { recursive: true });
  const jobs = cases.flatMap((c) => toolsets.map((t) => ({ ...c, toolset: t })));
  log(`${cases.length} test/format pairs, ${jobs.length} runs\n`);
  const results: CaseResult[] = [];
  let done = 0;
  await pool(jobs, Number(values.jobs), async (j) => {
    const r = await runCase(j.name, j.path, j.format, j.toolset, { iotestsDir: dir, tools: tools[j.toolset]!, timeoutMs: Number(values.timeout) * 1000, resultDir });
    results.push(r);
    done++;
    log(`[${done}/${jobs.length}] ${j.toolset.padEnd(4)} ${j.format.padEnd(5)} ${j.name.padEnd(28)} ${r.status} (${r.seconds.toFixed(1)} s)\n`);
  });
  const full = !values.fast && !wantTests && !values.formats;
  if (values['report-only']) results.length = 0;
  if (full) for (const t of toolsets) writeFileSync(join(resultDir, `results-${t}.json`), JSON.stringify({ version, results: results.filter((r) => r.toolset === t) }, null, 2) + '\n');
  const others = (['real', 'qimg'] as Toolset[]).filter((t) => !toolsets.includes(t) && !(t === 'qimg' && toolsets.includes('img-only')));
  for (const t of others) {
    const file = join(resultDir, `results-${t}.json`);
    if (!full || !existsSync(file)) continue;
    const kept = JSON.parse(readFileSync(file, 'utf8')) as { version: string; results: CaseResult[] };
    if (kept.version === version) results.push(...kept.results);
  }
  const rows = rowsOf(results);
  const complete = rows.every((r) => r.real && r.qimg);
  process.stdout.write(textTable(rows));
  const qimgVersion = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const info = { date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC', qemuVersion: version, qimgVersion, node: process.version, command: process.argv.slice(2).join(' '), fast: values.fast ?? false };
  const jsonName = values.fast ? 'results-fast.json' : 'results.json';
  writeFileSync(join(resultDir, jsonName), JSON.stringify({ info, summary: summary(rows), rows, excluded }, null, 2) + '\n');
  log(`results: ${join(resultDir, jsonName)}\n`);
  // Only a full run of both toolsets describes the suite; partial runs leave the doc alone.
  if (full && (complete || values['report-only']) && !values['no-docs'] && !toolsets.includes('img-only')) {
    const doc = join(REPO_ROOT, 'docs', 'iotests.md');
    writeFileSync(doc, markdown(rows, info, excluded, keptCauses(doc)));
    log(`wrote ${doc}\n`);
  }
  if (values.fast) return results.every((r) => r.toolset !== 'qimg' || r.status === 'pass') ? 0 : 1;
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  (e: unknown) => {
    log(`iotests: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
