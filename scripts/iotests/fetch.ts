/**
 * QEMU's test suite from Debian's source package of the installed
 * qemu-utils: `apt-get source` through a private apt configuration (the
 * machine's own sources, as deb-src), so nothing on the system changes and no
 * root is needed. Nothing is built: only tests/qemu-iotests and python/ are used.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE_DIR, IOTESTS_DIR, SOURCE_DIR } from './paths.js';

function sh(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status}):\n${r.stderr}`);
  return r.stdout;
}

/** Source package name and version of the installed qemu-utils. */
export function installedQemuSource(): { name: string; version: string; binaryVersion: string } {
  const outp = sh('dpkg-query', ['-W', '-f=${source:Package} ${source:Version} ${Version}', 'qemu-utils']).trim();
  const [name, version, binaryVersion] = outp.split(' ');
  if (!name || !version || !binaryVersion) throw new Error(`unexpected dpkg-query output: ${outp}`);
  return { name, version, binaryVersion };
}

/** One-line deb sources (`deb [opts] uri suite comps`) as deb-src lines. */
function debSrcFromList(text: string): string[] {
  const lines: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('deb ')) lines.push(`deb-src ${line.slice(4)}`);
  }
  return lines;
}

/** deb822 stanzas with `Types: deb` rewritten to `Types: deb-src`. */
function debSrcFromSources(text: string): string[] {
  const stanzas: string[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = stanza.split('\n').filter((l) => !l.startsWith('#') && l.trim() !== '');
    const types = fields.find((l) => /^Types:/i.test(l));
    if (!types || !/\bdeb\b/.test(types.slice(6))) continue;
    if (fields.some((l) => /^Enabled:\s*no/i.test(l))) continue;
    stanzas.push(fields.map((l) => (/^Types:/i.test(l) ? 'Types: deb-src' : l)).join('\n'));
  }
  return stanzas;
}

/** A private apt directory whose sources mirror the machine's, as deb-src. */
function privateAptConfig(): string[] {
  const apt = join(CACHE_DIR, 'apt');
  const parts = join(apt, 'sources.list.d');
  for (const d of [join(apt, 'lists', 'partial'), parts, join(apt, 'cache', 'archives', 'partial')]) mkdirSync(d, { recursive: true });
  const listLines: string[] = [];
  const stanzas: string[] = [];
  if (existsSync('/etc/apt/sources.list')) listLines.push(...debSrcFromList(readFileSync('/etc/apt/sources.list', 'utf8')));
  const sysParts = '/etc/apt/sources.list.d';
  if (existsSync(sysParts)) {
    for (const f of readdirSync(sysParts).sort()) {
      const text = readFileSync(join(sysParts, f), 'utf8');
      if (f.endsWith('.list')) listLines.push(...debSrcFromList(text));
      else if (f.endsWith('.sources')) stanzas.push(...debSrcFromSources(text));
    }
  }
  if (listLines.length === 0 && stanzas.length === 0) throw new Error('no apt sources found in /etc/apt to mirror as deb-src');
  writeFileSync(join(apt, 'sources.list'), listLines.join('\n') + '\n');
  writeFileSync(join(parts, 'mirror.sources'), stanzas.join('\n\n') + '\n');
  return [
    '-o', `Dir::Etc::SourceList=${join(apt, 'sources.list')}`,
    '-o', `Dir::Etc::SourceParts=${parts}`,
    '-o', `Dir::State::Lists=${join(apt, 'lists')}`,
    '-o', `Dir::Cache=${join(apt, 'cache')}`,
    '-o', 'Debug::NoLocking=1',
    '-o', 'APT::Sandbox::User=root',
  ];
}

/**
 * The qemu-iotests directory, fetched and unpacked on first use. A marker
 * file records the version so an upgrade of qemu-utils fetches again.
 */
export function ensureSuite(log: (s: string) => void): { dir: string; version: string } {
  const { name, version } = installedQemuSource();
  const marker = join(CACHE_DIR, 'src', 'VERSION');
  if (existsSync(IOTESTS_DIR) && existsSync(marker) && readFileSync(marker, 'utf8').trim() === version) return { dir: IOTESTS_DIR, version };
  log(`fetching ${name} ${version} source (apt-get source)\n`);
  const opts = privateAptConfig();
  sh('apt-get', [...opts, '-q', 'update']);
  const dl = join(CACHE_DIR, 'src');
  rmSync(dl, { recursive: true, force: true });
  mkdirSync(dl, { recursive: true });
  sh('apt-get', [...opts, '-q', 'source', '--download-only', `${name}=${version}`], dl);
  const dsc = readdirSync(dl).find((f) => f.endsWith('.dsc'));
  if (!dsc) throw new Error('apt-get source downloaded no .dsc');
  // dpkg-source applies Debian's patches, some of which touch the tests.
  sh('dpkg-source', ['-x', dsc, SOURCE_DIR], dl);
  if (!existsSync(join(IOTESTS_DIR, 'check'))) throw new Error(`no tests/qemu-iotests/check in ${SOURCE_DIR}`);
  writeFileSync(marker, version + '\n');
  return { dir: IOTESTS_DIR, version };
}
