// README.md's guides run verbatim: the demo is started as `npm run demo` starts it (scripts/demo.sh,
// on its documented ports), then every ```sh block is run in order, command by command, in one bash
// session from the checkout's folder, exactly as written. Each command must do what the text says:
//
//   # → 204 / # → 409 ...     curl: the HTTP status of its (last) answer
//   # → 250 / # → 554 ...     swaks: the server answered that code (250: the message was accepted)
//   # → exit N ...            the command's exit status
//   # → { "a", "b" }          its output is JSON with these keys (at any depth)
//   no `# →`                  exit 0, and every HTTP answer of a curl 2xx
//
// The `# →` goes at the end of the command's last line or on a comment line right after it. Blocks
// fenced ```sh no-run are shown but not run (they would start Docker, run the whole test suite, or
// wait for Ctrl-C); every other fence must name its language, so that no shell example escapes this
// test. Between commands the test waits until the workers run the configuration version in force
// (they do within a second; a person typing the next command is slower than that).
//
// The demo binds fixed ports (8080, 2587, 2526, 3389, 6379, 9465): runs of this file take
// /tmp/certgate-demo.lock, and a port already taken fails the test with the demo's own message.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = path.join(ROOT, 'README.md');
const DEMO_API = 'http://127.0.0.1:8080';
const DEMO_TOKEN = 'demo-token';
const COMMAND_TIMEOUT_MS = 120_000;
const run = promisify(execFile);

interface Block { info: string; line: number; lines: string[] }
interface Command { text: string; line: number; expect: string | null }
interface Result { exit: number; stdout: string; stderr: string; http: number[] }

// ---------------------------------------------------------------- README parsing

function fences(markdown: string): Block[] {
  const blocks: Block[] = [];
  let open: Block | null = null;
  markdown.split('\n').forEach((l, i) => {
    if (!l.startsWith('```')) {
      open?.lines.push(l);
      return;
    }
    if (open) {
      blocks.push(open);
      open = null;
    } else {
      open = { info: l.slice(3).trim(), line: i + 1, lines: [] };
    }
  });
  return blocks;
}

async function complete(text: string): Promise<boolean> {
  try {
    await run('bash', ['-n', '-c', text]);
    return true;
  } catch {
    return false;
  }
}

const ARROW = /#\s*→\s*(.+)$/;

/** The commands of a block: lines gathered until bash parses them as complete; `# →` attached. */
async function commands(block: Block): Promise<Command[]> {
  const out: Command[] = [];
  let pending: string[] = [];
  let start = 0;
  for (const [i, l] of block.lines.entries()) {
    const line = block.line + 1 + i;
    if (pending.length === 0) {
      if (l.trim() === '') continue;
      if (/^\s*#/.test(l)) {
        const arrow = ARROW.exec(l);
        const last = out.at(-1);
        if (arrow && last && last.expect === null && /^\s*#\s*→/.test(l)) last.expect = arrow[1]!.trim();
        continue;
      }
      start = line;
    }
    pending.push(l);
    // A trailing backslash continues the command, and so does a here-document until its delimiter line
    // (bash -n accepts an unterminated one); an open quote keeps bash -n failing.
    if (l.endsWith('\\')) continue;
    const text = pending.join('\n');
    const heredocs = [...text.matchAll(/<<-?\s*['"]?(\w+)['"]?/g)].map((m) => m[1] as string);
    if (heredocs.some((d) => !pending.slice(1).some((x) => x.trim() === d))) continue;
    if (await complete(text)) {
      const arrow = ARROW.exec(pending.at(-1) ?? '');
      out.push({ text, line: start, expect: arrow ? arrow[1]!.trim() : null });
      pending = [];
    }
  }
  assert.equal(pending.length, 0, `README.md:${start}: a command that never ends: ${pending.join('\n')}`);
  return out;
}

// ---------------------------------------------------------------- running

/** One bash for the whole README: variables and functions of earlier commands stay defined. */
class Shell {
  private readonly child: ChildProcess;
  private stdout = '';
  private stderr = '';
  private seq = 0;

  constructor() {
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('CERTGATE_')) delete env[k];
    this.child = spawn('bash', ['--noprofile', '--norc'], { cwd: ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (b: Buffer) => (this.stdout += b.toString()));
    this.child.stderr!.on('data', (b: Buffer) => (this.stderr += b.toString()));
    // curl as written, plus its HTTP status on stderr (after its own output) and a bound on its time.
    this.child.stdin!.write(`curl() { command curl --max-time 60 -w '%{stderr}@@HTTP %{http_code}\\n' "$@"; }\n`);
  }

  async run(text: string): Promise<Result> {
    const id = `${++this.seq}-${Date.now()}`;
    const [outStart, errStart] = [this.stdout.length, this.stderr.length];
    this.child.stdin!.write(`${text}\nprintf '\\n@@DONE %s %d\\n' ${id} $?\nprintf '\\n@@DONE %s\\n' ${id} >&2\n`);
    const doneOut = new RegExp(`\\n@@DONE ${id} (\\d+)\\n`);
    const doneErr = new RegExp(`\\n@@DONE ${id}\\n`);
    const deadline = Date.now() + COMMAND_TIMEOUT_MS;
    for (;;) {
      const m = doneOut.exec(this.stdout.slice(outStart));
      if (m && doneErr.test(this.stderr.slice(errStart))) {
        const stdout = this.stdout.slice(outStart, outStart + m.index);
        const stderr = this.stderr.slice(errStart).replace(doneErr, '');
        const http = [...stderr.matchAll(/^@@HTTP (\d{3})$/gm)].map((x) => Number(x[1]));
        return { exit: Number(m[1]), stdout, stderr: stderr.replace(/^@@HTTP \d{3}\n/gm, ''), http };
      }
      if (this.child.exitCode !== null) throw new Error(`the shell exited (${this.child.exitCode}) during: ${text}`);
      if (Date.now() > deadline) throw new Error(`no end within ${COMMAND_TIMEOUT_MS / 1000} s: ${text}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  close(): void {
    this.child.stdin!.end();
    this.child.kill('SIGTERM');
  }
}

/** Every key of every object in `v` (arrays: their elements). */
function keysOf(v: unknown, into = new Set<string>()): Set<string> {
  if (Array.isArray(v)) for (const x of v) keysOf(x, into);
  else if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      into.add(k);
      keysOf(x, into);
    }
  }
  return into;
}

/** What went wrong, or null when the command did what its text says. */
export function verdict(c: Command, r: Result): string | null {
  const swaks = /(^|\s|\|)swaks\s/.test(c.text);
  const curl = /^curl\s/.test(c.text.trim());
  const e = c.expect;
  if (e === null) {
    if (r.exit !== 0) return `exit ${r.exit}`;
    const bad = r.http.filter((s) => s < 200 || s > 299);
    return bad.length > 0 ? `HTTP ${bad.join(', ')}` : null;
  }
  const exit = /^exit (\d+)\b/.exec(e);
  if (exit) return r.exit === Number(exit[1]) ? null : `exit ${r.exit}, not ${exit[1]}`;
  const code = /^(\d{3})\b/.exec(e);
  if (code && curl) return r.http.at(-1) === Number(code[1]) ? null : `HTTP ${r.http.join(', ') || 'none'}, not ${code[1]}`;
  if (code && swaks) {
    const replies = [...r.stdout.matchAll(/^<\S*\s+(\d{3})[ -]/gm)].map((x) => Number(x[1]));
    if (code[1] === '250') {
      const accepted = /^\s*\S*> \.\r?\n<\S*\s+250[ -]/m.test(r.stdout);
      return r.exit === 0 && accepted ? null : `the message was not accepted (swaks exit ${r.exit}, replies ${replies.join(' ')})`;
    }
    return replies.includes(Number(code[1])) ? null : `no ${code[1]} reply (replies ${replies.join(' ')})`;
  }
  if (e.startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(r.stdout);
    } catch {
      return `not JSON: ${r.stdout.slice(0, 200)}`;
    }
    const keys = keysOf(json);
    const missing = [...e.matchAll(/"([^"]+)"/g)].map((m) => m[1] as string).filter((k) => !keys.has(k));
    if (r.http.some((s) => s < 200 || s > 299)) return `HTTP ${r.http.join(', ')}`;
    return missing.length === 0 ? null : `no ${missing.join(', ')} in the answer`;
  }
  return `unknown expectation "# → ${e}" (use a status or reply code, exit N, or { "keys" })`;
}

// ---------------------------------------------------------------- the demo

let lock: ChildProcess | null = null;
let demo: ChildProcess | null = null;
let demoOutput = '';
let rootBefore: Set<string>;

async function waitForWorkers(): Promise<void> {
  const headers = { authorization: `Bearer ${DEMO_TOKEN}` };
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    try {
      const { version } = (await (await fetch(`${DEMO_API}/v1/config`, { headers })).json()) as { version: number };
      const { items } = (await (await fetch(`${DEMO_API}/v1/workers`, { headers })).json()) as { items: Array<{ configVersion: number }> };
      if (items.length > 0 && items.every((w) => w.configVersion >= version)) return;
    } catch {
      /* the API may be restarting nothing here; keep polling */
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  rootBefore = new Set(await readdir(ROOT));
  lock = spawn('flock', ['-w', '900', '/tmp/certgate-demo.lock', '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    lock!.stdout!.once('data', () => resolve());
    lock!.once('exit', (code) => reject(new Error(`flock /tmp/certgate-demo.lock failed (${code})`)));
  });
  demo = spawn('bash', ['scripts/demo.sh'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CI: process.env.CI ?? '' } });
  demo.stdout!.on('data', (b: Buffer) => (demoOutput += b.toString()));
  demo.stderr!.on('data', (b: Buffer) => (demoOutput += b.toString()));
  const deadline = Date.now() + 300_000;
  while (!demoOutput.includes('certgate demo is running.')) {
    if (demo.exitCode !== null) throw new Error(`the demo exited (${demo.exitCode}):\n${demoOutput}`);
    if (Date.now() > deadline) throw new Error(`the demo did not start within 300 s:\n${demoOutput}`);
    await new Promise((r) => setTimeout(r, 200));
  }
});

after(async () => {
  if (demo && demo.exitCode === null) {
    const exited = new Promise((r) => demo!.once('exit', r));
    demo.kill('SIGTERM');
    const timer = setTimeout(() => demo!.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
  }
  lock?.stdin?.end();
  // Files the examples wrote in the checkout (config.json, certgate.yaml).
  for (const name of await readdir(ROOT)) {
    if (!rootBefore.has(name) && name !== '.demo') await rm(path.join(ROOT, name), { force: true });
  }
});

describe('README.md', () => {
  test('the demo prints its directory on the documented port with its password, as the README says', async () => {
    assert.match(demoOutput, /LDAP\s+ldap:\/\/127\.0\.0\.1:3389\s+\(base dc=example,dc=com; admin cn=admin,dc=example,dc=com password secret\)/);
    const readme = await readFile(README, 'utf8');
    assert.match(readme, /`ldap:\/\/127\.0\.0\.1:3389`/);
    assert.match(readme, /admin `cn=admin,dc=example,dc=com` with the password `secret`/);
  });

  test('every fence names its language; shell ones are sh or sh no-run', async () => {
    const blocks = fences(await readFile(README, 'utf8'));
    const untagged = blocks.filter((b) => b.info === '').map((b) => `README.md:${b.line}`);
    assert.deepEqual(untagged, [], 'tag each: ```sh (run by this test), ```sh no-run, or the language (json, yaml, text)');
    for (const b of blocks) if (/^(sh|bash|shell)\b/.test(b.info)) assert.match(b.info, /^sh( no-run)?$/, `README.md:${b.line}: ${b.info}`);
    assert.ok(blocks.filter((b) => b.info === 'sh').length >= 15);
  });

  test('the CLI section describes every command and option of `certgate --help`', async () => {
    const readme = await readFile(README, 'utf8');
    const section = readme.slice(readme.indexOf('## The `certgate` command line'), readme.indexOf('## Using the API'));
    const squash = (t: string) => t.replace(/\s+/g, ' ').trim();
    for (const cmd of ['status', 'workers', 'config export', 'config diff', 'config apply', 'ldap test', 'crl status', 'crl refresh', 'events', 'doctor']) {
      const { stdout } = await run(process.execPath, ['cli/certgate.mjs', ...cmd.split(' '), '--help'], { cwd: ROOT });
      const description = squash(stdout.split('\n\n')[1] ?? '');
      assert.ok(squash(section).includes(description), `${cmd}: "${description}" is not in the README's CLI section`);
      for (const [, option] of stdout.matchAll(/^\s+(?:-\w, )?(--[a-z-]+)/gm)) {
        if (option !== '--help') assert.ok(section.includes(option as string), `${cmd} ${option} is not in the README's CLI section`);
      }
    }
  });

  test('every sh example does what the text says, run verbatim against the demo', async () => {
    const blocks = fences(await readFile(README, 'utf8')).filter((b) => b.info === 'sh');
    const shell = new Shell();
    const failures: string[] = [];
    let count = 0;
    try {
      for (const block of blocks) {
        for (const c of await commands(block)) {
          const r = await shell.run(c.text);
          count++;
          const wrong = verdict(c, r);
          if (wrong) {
            failures.push(`README.md:${c.line}: ${wrong}\n  $ ${c.text.split('\n').join('\n    ')}\n  stdout: ${r.stdout.trim().slice(-1500)}\n  stderr: ${r.stderr.trim().slice(-800)}`);
          }
          await waitForWorkers();
        }
      }
    } finally {
      shell.close();
    }
    assert.ok(count >= 60, `only ${count} commands found`);
    assert.deepEqual(failures, [], `${failures.length} of ${count} README commands did not do what the text says:\n\n${failures.join('\n\n')}`);
  });
});
