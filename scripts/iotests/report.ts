/** The run's results as a terminal table, markdown (docs/iotests.md) and JSON. */
import { classify } from './classify.js';
import type { CaseResult, Status } from './run-case.js';
import type { Excluded, Format } from './select.js';

export interface Row {
  test: string;
  format: Format;
  real?: CaseResult;
  qimg?: CaseResult;
}

export interface RunInfo {
  date: string;
  qemuVersion: string;
  qimgVersion: string;
  node: string;
  command: string;
  fast: boolean;
}

const label = (r?: CaseResult): string => (r === undefined ? '-' : r.status);

export function rowsOf(results: CaseResult[]): Row[] {
  const byKey = new Map<string, Row>();
  for (const r of results) {
    const key = `${r.test}\0${r.format}`;
    const row = byKey.get(key) ?? { test: r.test, format: r.format };
    // img-only runs show in the qimg column (a run has one or the other).
    row[r.toolset === 'real' ? 'real' : 'qimg'] = r;
    byKey.set(key, row);
  }
  return [...byKey.values()].sort((a, b) => a.test.localeCompare(b.test) || a.format.localeCompare(b.format));
}

export function summary(rows: Row[]): Record<'real' | 'qimg', Record<Status, number>> & { bothPass: number; realPassQimgNot: number } {
  const zero = (): Record<Status, number> => ({ pass: 0, fail: 0, notrun: 0, timeout: 0 });
  const s = { real: zero(), qimg: zero(), bothPass: 0, realPassQimgNot: 0 };
  for (const row of rows) {
    if (row.real) s.real[row.real.status]++;
    if (row.qimg) s.qimg[row.qimg.status]++;
    if (row.real?.status === 'pass' && row.qimg?.status === 'pass') s.bothPass++;
    if (row.real?.status === 'pass' && row.qimg && row.qimg.status !== 'pass') s.realPassQimgNot++;
  }
  return s;
}

export function textTable(rows: Row[]): string {
  const lines = [`${'test'.padEnd(28)} ${'format'.padEnd(6)} ${'real'.padEnd(8)} qimg`];
  for (const r of rows) lines.push(`${r.test.padEnd(28)} ${r.format.padEnd(6)} ${label(r.real).padEnd(8)} ${label(r.qimg)}`);
  const s = summary(rows);
  const counts = (c: Record<Status, number>): string => `${c.pass} pass, ${c.fail} fail, ${c.timeout} timeout, ${c.notrun} not run`;
  lines.push('', `real tools: ${counts(s.real)}`, `qimg:       ${counts(s.qimg)}`, `pairs passing with the real tools: ${s.real.pass}, of which qimg passes ${s.bothPass}`);
  return lines.join('\n') + '\n';
}

/** The pairs that pass with the real tools but not with qimg, grouped by their guessed cause, largest group first. */
export function failuresByCause(rows: Row[]): string {
  const groups = new Map<string, { area: string; cases: string[] }>();
  for (const r of rows) {
    if (r.real?.status !== 'pass' || !r.qimg || r.qimg.status === 'pass') continue;
    const c = classify(r.qimg);
    const g = groups.get(c.cause) ?? { area: c.area, cases: [] };
    g.cases.push(`${r.test} ${r.format}`);
    groups.set(c.cause, g);
  }
  const sorted = [...groups].sort((a, b) => b[1].cases.length - a[1].cases.length);
  return [
    '| cases | cause (first guess from the diff) | area | test/format |',
    '|---:|---|---|---|',
    ...sorted.map(([cause, g]) => `| ${g.cases.length} | ${cause} | ${g.area} | ${g.cases.join(', ')} |`),
  ].join('\n');
}

export function markdown(rows: Row[], info: RunInfo, excluded: Excluded[], causes: string): string {
  const s = summary(rows);
  const mark = (r?: CaseResult): string => (r === undefined ? '' : r.status === 'pass' ? 'pass' : r.status === 'notrun' ? 'not run' : `**${r.status}**`);
  const byReason = new Map<string, string[]>();
  for (const e of excluded) byReason.set(e.reason, [...(byReason.get(e.reason) ?? []), e.name]);
  return [
    '# QEMU iotests with qimg',
    '',
    "QEMU's own block-layer test suite (`tests/qemu-iotests` of QEMU 7.2, from Debian's source package), run",
    'twice: once with the real `qemu-img` and `qemu-io` (the baseline), once with links named `qemu-img` and',
    '`qemu-io` that start qimg (which then speaks as those tools). Only tests that need neither a VM, QMP, the',
    'storage daemon nor qemu-nbd are selected; formats qcow2, qed and raw on the file protocol.',
    '',
    '## Running it',
    '',
    '```sh',
    'npm run iotests             # the whole selection, both toolsets (about half an hour on 2 cores)',
    'npm run iotests -- --fast   # a few tests that pass, for CI',
    'npm run iotests -- --tools qimg --tests 001,002 --formats qcow2',
    '```',
    '',
    'The first run fetches the source with `apt-get source qemu` (the version of the installed qemu-utils)',
    'through a private apt configuration under `.iotests-cache/` whose deb-src entries mirror the machine\'s',
    'apt sources; nothing on the system changes and QEMU is not built. Results: `.iotests-cache/results/results.json`;',
    'for each failure, the output and its diff against the expected output under',
    '`.iotests-cache/results/<tools>/<format>/<test>.diff`.',
    '',
    `Last run: ${info.date}, QEMU ${info.qemuVersion}, qimg ${info.qimgVersion}, node ${info.node}.`,
    '',
    '## Summary',
    '',
    '| | pass | fail | timeout | not run |',
    '|---|---:|---:|---:|---:|',
    `| real tools | ${s.real.pass} | ${s.real.fail} | ${s.real.timeout} | ${s.real.notrun} |`,
    `| qimg | ${s.qimg.pass} | ${s.qimg.fail} | ${s.qimg.timeout} | ${s.qimg.notrun} |`,
    '',
    `Of the ${s.real.pass} test/format pairs that pass with the real tools, qimg passes ${s.bothPass}.`,
    '',
    '## Failures by cause',
    '',
    'Pairs that pass with the real tools and not with qimg. The cause is the first rule that matches the',
    'diff (scripts/iotests/classify.ts), so a test that fails for two reasons shows only the first.',
    '',
    failuresByCause(rows),
    '',
    causes,
    '## Results',
    '',
    '| test | format | real tools | qimg |',
    '|---|---|---|---|',
    ...rows.map((r) => `| ${r.test} | ${r.format} | ${mark(r.real)} | ${mark(r.qimg)} |`),
    '',
    '## Not selected',
    '',
    ...[...byReason].map(([reason, names]) => `- ${reason} (${names.length}): ${names.join(', ')}`),
    '',
  ].join('\n');
}
