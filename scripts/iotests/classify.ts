/**
 * A first guess at why a case fails with qimg, from its diff: the first
 * rule (in priority order) that one of the changed lines matches. The doc
 * groups failures by these causes; the diffs stay the evidence.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { CaseResult } from './run-case.js';

export interface Cause {
  /** Short name, the group heading. */
  cause: string;
  /** Who owns the fix: an area of the project. */
  area: string;
}

type Rule = [RegExp, (m: RegExpExecArray) => Cause];

const IO = 'qemu-io command language';
const SYNTAX = 'filename and option syntaxes';

const RULES: Rule[] = [
  [/^\+.*command "(\w+)" not found/m, (m) => ({ cause: `qemu-io command \`${m[1]}\` missing`, area: IO })],
  [/^\+.*(?:json:|blkdebug:|blkverify:|'file:|Could not open 'file:)/m, () => ({ cause: 'json:/blkdebug:/blkverify:/file: filenames', area: SYNTAX })],
  [/^\+.*Unknown driver '([^']+)'/m, (m) => ({ cause: `driver \`${m[1]}\` (not a format qimg has)`, area: SYNTAX })],
  [/^\+.*(?:unrecognized option '([^']+)'|invalid option -- '(.)')/m, (m) => ({ cause: `option \`${m[1] ?? `-${m[2]}`}\` not accepted`, area: 'options' })],
  [/^\+.*Invalid image size specified/m, () => ({ cause: 'sizes above 2^53 bytes', area: 'design limit' })],
  [/^\+.*(?:--image-opts|image-opts)/m, () => ({ cause: '--image-opts', area: SYNTAX })],
  [/^\+.*no file open, try 'help open'/m, () => ({ cause: 'qemu-io `open` without a file', area: IO })],
];

export function classify(r: CaseResult): Cause {
  if (r.status === 'timeout') return { cause: 'over the time limit (a node process per qemu-io/qemu-img call)', area: 'speed' };
  const diff = r.diffFile && existsSync(r.diffFile) ? readFileSync(r.diffFile, 'utf8') : '';
  for (const [re, make] of RULES) {
    const m = re.exec(diff);
    if (m) return make(m);
  }
  const first = diff.split('\n').find((l) => /^[-+](?![-+])/.test(l));
  return { cause: `other: \`${(first ?? r.detail ?? 'no output').slice(0, 100).replaceAll('`', "'")}\``, area: 'other' };
}
