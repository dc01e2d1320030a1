/** The README example convention the package test relies on (test/helpers/readme-examples.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { documentedFixtures, missingPrint, readmeExamples } from '../helpers/readme-examples.js';

const md = [
  '# x',
  '<!--',
  'The blocks marked `ts example NAME` below run in a directory holding:',
  '  disk.qcow2    qcow2, 64 MiB',
  '  disk.raw      the same, raw',
  '-->',
  '```ts',
  'not an example',
  '```',
  '```ts example first',
  "import { a } from 'qimg';",
  'console.log(a); // prints: 1',
  '// prints: two words',
  '```',
  '```js example second-one',
  'void 0;',
  '```',
].join('\n');

test('fenced blocks marked `ts example NAME` / `js example NAME` are the examples, with their `// prints:` lines', () => {
  const ex = readmeExamples(md);
  assert.deepEqual(
    ex.map((e) => [e.name, e.lang, e.prints, e.line]),
    [
      ['first', 'ts', ['1', 'two words'], 10],
      ['second-one', 'js', [], 15],
    ],
  );
  assert.equal(ex[0]!.code, "import { a } from 'qimg';\nconsole.log(a); // prints: 1\n// prints: two words\n");
});

test('an unclosed example or a repeated name is an error, not a silently dropped example', () => {
  assert.throws(() => readmeExamples('```ts example a\nx\n'), /no closing fence/);
  assert.throws(() => readmeExamples('```ts example a\n```\n```js example a\n```\n'), /second example named 'a'/);
});

test('the fixture names come from the comment that describes the examples', () => {
  assert.deepEqual(documentedFixtures(md), ['disk.qcow2', 'disk.raw']);
  assert.deepEqual(documentedFixtures('<!-- other comment\n  x.qcow2  y -->'), []);
});

test('printed lines must all appear, whole and in order', () => {
  assert.equal(missingPrint('a\nb\nc\n', ['a', 'c']), undefined);
  assert.equal(missingPrint('a\nb\nc\n', ['c', 'a']), 'a');
  assert.equal(missingPrint('ab\n', ['a']), 'a');
  assert.equal(missingPrint('a  \n', ['a']), undefined);
});
