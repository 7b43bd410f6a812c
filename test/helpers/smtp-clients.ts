// SMTP clients nobody here wrote, driven from tests: swaks, Python's smtplib and
// `openssl s_client`. Async child processes only (a test process hosts servers).
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface ServerReply { code: number; text: string }

export interface SwaksResult {
  exitCode: number;
  /** Every server reply in order (multi-line replies joined). */
  replies: ServerReply[];
  transcript: string;
  /** The last reply, i.e. the one that ended the session or answered the last command. */
  last: ServerReply | null;
  /** The reply to the first client line starting with `command` (e.g. 'MAIL', 'AUTH', 'RCPT'). */
  replyTo(command: string): ServerReply | null;
  /** Server EHLO keywords of the last EHLO answer (e.g. 'STARTTLS', 'AUTH PLAIN LOGIN'). */
  ehlo: string[];
}

/** Runs swaks and parses its transcript. */
export async function swaks(args: string[], timeoutMs = 30_000): Promise<SwaksResult> {
  let stdout: string;
  let exitCode = 0;
  try {
    ({ stdout } = await execFileAsync('swaks', ['--hide-informational', '--timeout', '15', ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }));
  } catch (e) {
    const err = e as { stdout?: string; code?: number | string; message: string };
    if (err.stdout === undefined) throw new Error(`swaks failed to run: ${err.message}`, { cause: e });
    stdout = err.stdout;
    exitCode = typeof err.code === 'number' ? err.code : 1;
  }
  return parseSwaks(stdout, exitCode);
}

export function parseSwaks(transcript: string, exitCode: number): SwaksResult {
  const replies: ServerReply[] = [];
  const pairs: Array<{ command: string; reply: ServerReply | null }> = [];
  let ehlo: string[] = [];
  let pendingEhlo: string[] | null = null;
  let lastCommand: { command: string; reply: ServerReply | null } | null = null;
  for (const raw of transcript.split('\n')) {
    const client = /^ *(?:~>|->) (.*)$/.exec(raw);
    if (client) {
      lastCommand = { command: client[1] ?? '', reply: null };
      pairs.push(lastCommand);
      if (/^EHLO/i.test(lastCommand.command)) pendingEhlo = [];
      continue;
    }
    const server = /^ *(?:<~|<-|<\*\*|<~\*) +(\d{3})([ -])(.*)$/.exec(raw);
    if (!server) continue;
    const code = Number(server[1]);
    const text = server[3] ?? '';
    if (pendingEhlo && code === 250) pendingEhlo.push(text);
    if (server[2] === '-') continue;
    const reply = { code, text };
    replies.push(reply);
    if (lastCommand && !lastCommand.reply) lastCommand.reply = reply;
    if (pendingEhlo) {
      ehlo = pendingEhlo.slice(1);
      pendingEhlo = null;
    }
  }
  return {
    exitCode, replies, transcript, ehlo,
    last: replies.at(-1) ?? null,
    replyTo: (command) => pairs.find((p) => p.command.toUpperCase().startsWith(command.toUpperCase()))?.reply ?? null,
  };
}

/** Runs a Python 3 script (stdin-free) with arguments; returns its stdout parsed as JSON. */
export async function python<T = unknown>(script: string, args: string[] = [], timeoutMs = 30_000): Promise<T> {
  const { stdout } = await execFileAsync('python3', ['-c', script, ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
  return JSON.parse(stdout) as T;
}

/**
 * An smtplib session: connect (optionally implicit TLS), EHLO, STARTTLS (optionally with a
 * client certificate), optional AUTH PLAIN, one message. Prints each step's reply as JSON.
 */
export const SMTPLIB_SESSION = String.raw`
import json, smtplib, ssl, sys
cfg = json.loads(sys.argv[1])
steps = []
def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    if cfg.get('cert'):
        c.load_cert_chain(cfg['cert'], cfg['key'])
    return c
try:
    if cfg.get('implicitTls'):
        s = smtplib.SMTP_SSL('127.0.0.1', cfg['port'], context=ctx(), timeout=20)
    else:
        s = smtplib.SMTP('127.0.0.1', cfg['port'], timeout=20)
    code, msg = s.ehlo('client.example')
    steps.append(['EHLO', code, msg.decode()])
    if cfg.get('starttls'):
        code, msg = s.starttls(context=ctx())
        steps.append(['STARTTLS', code, msg.decode()])
        code, msg = s.ehlo('client.example')
        steps.append(['EHLO', code, msg.decode()])
    if cfg.get('user') is not None:
        try:
            s.login(cfg['user'], cfg['password'])
            steps.append(['AUTH', 235, 'ok'])
        except smtplib.SMTPAuthenticationError as e:
            steps.append(['AUTH', e.smtp_code, e.smtp_error.decode()])
            raise SystemExit
    if cfg.get('send', True):
        try:
            message = cfg.get('message', 'Subject: smtplib\r\n\r\nhello\r\n')
            if cfg.get('bodyLines'):
                message = 'Subject: big\r\n\r\n' + ('x' * 998 + '\r\n') * cfg['bodyLines']
            options = ['SMTPUTF8'] if cfg.get('smtputf8') else []
            refused = s.sendmail(cfg.get('from', 'sender@example.com'), cfg.get('to', ['rcpt@example.com']), message.encode(), mail_options=options)
            steps.append(['DATA', 250, json.dumps(refused)])
        except smtplib.SMTPResponseException as e:
            steps.append(['SEND', e.smtp_code, e.smtp_error.decode(errors='replace')])
        except smtplib.SMTPRecipientsRefused as e:
            first = list(e.recipients.values())[0]
            steps.append(['RCPT', first[0], first[1].decode()])
    s.quit()
except SystemExit:
    pass
except smtplib.SMTPServerDisconnected as e:
    steps.append(['DISCONNECTED', 0, str(e)])
except (smtplib.SMTPResponseException) as e:
    steps.append(['ERROR', e.smtp_code, e.smtp_error.decode(errors='replace')])
except Exception as e:
    steps.append(['EXCEPTION', 0, repr(e)])
print(json.dumps(steps))
`;

export interface SmtplibOptions {
  port: number; implicitTls?: boolean; starttls?: boolean; cert?: string; key?: string;
  user?: string; password?: string; send?: boolean; from?: string; to?: string[]; message?: string;
  /** Instead of `message`: a generated message of this many 1000-byte lines (argv cannot carry large messages). */
  bodyLines?: number;
  /** MAIL FROM with SMTPUTF8 (needed for non-ASCII addresses). */
  smtputf8?: boolean;
}

export async function smtplib(o: SmtplibOptions): Promise<Array<[string, number, string]>> {
  return python<Array<[string, number, string]>>(SMTPLIB_SESSION, [JSON.stringify(o)]);
}

/**
 * `openssl s_client -starttls smtp` (or implicit TLS) typing `lines` one by one, each after
 * the previous reply; returns everything the server printed after the handshake.
 */
export async function opensslSession(o: { port: number; implicitTls?: boolean; cert?: string; key?: string; lines: string[] }, timeoutMs = 20_000): Promise<string> {
  const args = ['s_client', '-connect', `127.0.0.1:${o.port}`, '-quiet', '-crlf', '-no_ign_eof'];
  if (!o.implicitTls) args.push('-starttls', 'smtp');
  if (o.cert && o.key) args.push('-cert', o.cert, '-key', o.key);
  const child = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', () => undefined);
  const deadline = Date.now() + timeoutMs;
  const waitForReply = async (count: number) => {
    while (Date.now() < deadline && child.exitCode === null) {
      const finals = out.split('\r\n').filter((l) => /^\d{3} /.test(l)).length;
      if (finals >= count) return;
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  // s_client consumes the greeting and the EHLO/STARTTLS exchange itself; with implicit TLS the greeting is ours to see.
  let expected = o.implicitTls ? 1 : 0;
  await waitForReply(expected);
  if (!o.implicitTls) await new Promise((r) => setTimeout(r, 300)); // handshake settles
  for (const line of o.lines) {
    if (child.exitCode !== null) break;
    child.stdin.write(`${line}\n`);
    expected += 1;
    await waitForReply(expected);
  }
  child.stdin.end();
  if (child.exitCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
    await exited;
    clearTimeout(timer);
  }
  return out;
}

const SMTPLIB_COMMANDS = String.raw`
import json, smtplib, ssl, sys
cfg = json.loads(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', cfg['port'], timeout=20, source_address=(cfg['source'], 0) if cfg.get('source') else None)
s.ehlo('client.example')
if cfg.get('starttls'):
    c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
    if cfg.get('cert'): c.load_cert_chain(cfg['cert'], cfg['key'])
    s.starttls(context=c)
    s.ehlo('client.example')
out = []
for line in cfg['commands']:
    name, _, args = line.partition(' ')
    code, msg = s.docmd(name, args)
    out.append([code, msg.decode(errors='replace')])
print(json.dumps(out))
`;

/** Sends raw commands (after EHLO, and STARTTLS if asked) with smtplib's docmd, which sends what it is told. */
export async function smtpCommands(o: {
  port: number; starttls?: boolean; cert?: string; key?: string; commands: string[];
  /** A loopback source address (127.0.0.x): per-client limits see a client of its own. */
  source?: string;
}): Promise<Array<[number, string]>> {
  return python<Array<[number, string]>>(SMTPLIB_COMMANDS, [JSON.stringify(o)]);
}
