/**
 * The library examples in README.md, as the package test runs them.
 *
 * Convention: a fenced block whose info string is `ts example NAME` or
 * `js example NAME` is a complete program (an ES module). Its lines with a
 * `// prints: TEXT` comment name lines the program must print, in order. The
 * files the examples open are listed in an HTML comment at the top of the
 * library section, one `NAME.EXT  description` line each.
 */

export interface ReadmeExample {
  name: string;
  lang: 'ts' | 'js';
  code: string;
  /** Lines stdout must contain, in this order. */
  prints: string[];
  /** 1-based line of the opening fence, for messages. */
  line: number;
}

const FENCE = /^```(ts|js) example ([a-z0-9-]+)\s*$/;
const PRINTS = /\/\/ prints: (.*)$/;

export function readmeExamples(markdown: string): ReadmeExample[] {
  const lines = markdown.split('\n');
  const out: ReadmeExample[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE.exec(lines[i]!);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i] !== '```'; i++) body.push(lines[i]!);
    if (i === lines.length) throw new Error(`README.md:${start + 1}: example '${open[2]}' has no closing fence`);
    const name = open[2]!;
    if (out.some((e) => e.name === name)) throw new Error(`README.md:${start + 1}: a second example named '${name}'`);
    const prints = body.flatMap((l) => {
      const m = PRINTS.exec(l);
      return m ? [m[1]!.trimEnd()] : [];
    });
    out.push({ name, lang: open[1] as 'ts' | 'js', code: body.join('\n') + '\n', prints, line: start + 1 });
  }
  return out;
}

/** The fixture file names the README's example comment documents. */
export function documentedFixtures(markdown: string): string[] {
  const comment = /<!--([\s\S]*?)-->/g;
  for (const m of markdown.matchAll(comment)) {
    if (!/\b(ts|js) example\b/.test(m[1]!)) continue;
    return [...m[1]!.matchAll(/^\s+([\w.-]+\.(?:qcow2|qed|raw|img))\s/gm)].map((f) => f[1]!);
  }
  return [];
}

/**
 * Whether `stdout` contains each expected line, in order. Returns the first
 * one missing, or undefined.
 */
export function missingPrint(stdout: string, prints: readonly string[]): string | undefined {
  const lines = stdout.split('\n').map((l) => l.trimEnd());
  let at = 0;
  for (const want of prints) {
    const found = lines.indexOf(want, at);
    if (found < 0) return want;
    at = found + 1;
  }
  return undefined;
}
