// ARCHITECTURE.md stays true: every path it names exists, its command table is the code's
// COMMAND_ROUTES, and the import rules it states hold (readers never import writers, domain
// code never imports an entry point).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { COMMAND_ROUTES } from '../worker/smtp/adapter.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const doc = readFileSync(path.join(ROOT, 'ARCHITECTURE.md'), 'utf8');

test('every path ARCHITECTURE.md names exists', () => {
  const paths = [...doc.matchAll(/`((?:api|worker|shared|cli|test|bench|deploy|scripts|openapi)\/[^`\s]*)`/g)].map((m) => m[1] ?? '');
  assert.ok(paths.length > 30, `only ${paths.length} paths found`);
  const missing = paths.filter((p) => !existsSync(path.join(ROOT, p)));
  assert.deepEqual(missing, []);
});

test('the command table lists exactly the commands of COMMAND_ROUTES', () => {
  const table = doc.slice(doc.indexOf('| command |'), doc.indexOf('Where each rule'));
  const rows = [...table.matchAll(/^\| ([A-Z]+|\((?:other|refused session)\)) \|/gm)].map((m) => m[1]);
  assert.deepEqual(rows.sort(), Object.keys(COMMAND_ROUTES).sort());
});

function filesUnder(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir)).flatMap((name) => {
    const rel = path.join(dir, name);
    return statSync(path.join(ROOT, rel)).isDirectory() ? filesUnder(rel) : rel.endsWith('.ts') ? [rel] : [];
  });
}

function importsOf(file: string): string[] {
  const src = readFileSync(path.join(ROOT, file), 'utf8');
  return [...src.matchAll(/^import [^;]*? from '(\.[^']+)'/gm)].map((m) => path.normalize(path.join(path.dirname(file), m[1] ?? '')));
}

test('shared/ never imports api/, worker/, cli/ or an entry point', () => {
  const bad = filesUnder('shared').flatMap((f) => importsOf(f).filter((i) => /^(api|worker|cli)\//.test(i)).map((i) => `${f} -> ${i}`));
  assert.deepEqual(bad, []);
});

test('the CRL readers never import the CRL writers', () => {
  const writers = ['shared/pki/crl/refresh.ts', 'shared/pki/crl/download.ts'];
  const bad = ['shared/pki/crl/store.ts', 'shared/pki/crl/stored.ts'].flatMap((f) => importsOf(f).filter((i) => writers.includes(i)).map((i) => `${f} -> ${i}`));
  assert.deepEqual(bad, []);
});

test('shared/util/ holds generic helpers only: it imports no certgate domain', () => {
  const bad = filesUnder('shared/util').flatMap((f) => importsOf(f).filter((i) => !i.startsWith('shared/util/')).map((i) => `${f} -> ${i}`));
  assert.deepEqual(bad, []);
});
