/**
 * The CLI is a client of the library: every module under src/cli imports
 * only the package's entry points (src/index.ts, src/node.ts), Node's own
 * modules, and other CLI modules. What the CLI can do, a program can do.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve, dirname } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const cliDir = join(root, 'src/cli');
const allowed = new Set([join(root, 'src/index.js'), join(root, 'src/node.js')]);

function* sources(dir: string): Generator<string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* sources(p);
    else if (e.name.endsWith('.ts')) yield p;
  }
}

/** Every module specifier in `import ... from`, `export ... from` and `import(...)`. */
export function specifiers(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+'([^']+)'/g)) out.push(m[1]!);
  for (const m of text.matchAll(/(?:^|\n)\s*import\s+'([^']+)'/g)) out.push(m[1]!);
  for (const m of text.matchAll(/\bimport\(\s*'([^']+)'\s*\)/g)) out.push(m[1]!);
  return out;
}

test('the specifier scan finds static, re-export, side-effect and dynamic imports', () => {
  const found = specifiers("import a from 'x';\nexport { b } from 'y';\nimport 'z';\nconst c = await import('w');\nimport {\n  d,\n} from 'v';");
  assert.deepEqual(found.sort(), ['v', 'w', 'x', 'y', 'z']);
});

test('src/cli imports nothing but the package entry points, node: modules and CLI modules', () => {
  const offending: string[] = [];
  let files = 0;
  for (const file of sources(cliDir)) {
    files++;
    for (const spec of specifiers(readFileSync(file, 'utf8'))) {
      if (spec.startsWith('node:')) continue;
      if (!spec.startsWith('.')) {
        offending.push(`${relative(root, file)}: ${spec}`);
        continue;
      }
      const target = resolve(dirname(file), spec);
      if (target.startsWith(cliDir + '/') || allowed.has(target)) continue;
      offending.push(`${relative(root, file)}: ${spec}`);
    }
  }
  assert.ok(files > 10, `expected the CLI's sources, found ${files}`);
  assert.deepEqual(offending, []);
});
