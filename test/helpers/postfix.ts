// A private Postfix (Debian's postfix package) as ../shared/recipes/postfix.sh runs it: config,
// queue, data and log under one temporary directory, nothing in /etc/postfix touched, smtpd on a
// free loopback port, every message relayed to one relayhost. The one Postfix harness of the
// repository, for two uses:
// - a real relaying MTA in front of certgate (test/refused-session.test.ts: `relayhost` = a
//   certgate listener, `clientTls` saying how Postfix's smtp client talks TLS to it): what
//   Postfix logs and does with the mail when certgate refuses is what administrators will see;
// - bench/smtp.ts's reference MTA (mode `cert`: STARTTLS offered, a client certificate asked
//   for and verified against the CA, relaying only for a verified one), whose CPU is its
//   master's process tree (`masterPid`).
// Postfix queues: its `250` means "written to the queue"; delivery happens after, and
// `waitForQueue()` / `maillog()` show how it went. Needs root (Postfix starts as root and drops
// to the `postfix` user), like the recipe: `postfixUnavailable()` says why it cannot run here.
// `stop()` stops this instance only and removes its directory.
import { execFile } from 'node:child_process';
import { access, mkdtemp, mkdir, readFile, rm, writeFile, chmod, chown, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort, waitForPort } from './ports.ts';

const run = promisify(execFile);
const POSTFIX = '/usr/sbin/postfix';

export interface PostfixOptions {
  /** Where every message goes (Postfix's `relayhost`, without MX lookups). */
  relayhost: { host: string; port: number };
  /** `cert`: relay only for a verified client certificate; `mynetworks`: for any client on 127.0.0.0/8 (default). */
  mode?: 'cert' | 'mynetworks';
  /** smtpd's TLS (STARTTLS offered, client certificates asked for and checked against caPem); null: no TLS. */
  serverTls?: { certPem: string; keyPem: string; caPem: string } | null;
  /** The smtp client's TLS towards the relayhost (`smtp_tls_security_level`; default none). */
  clientTls?: { level: 'none' | 'may' | 'encrypt' | 'verify'; caPem?: string; certPem?: string; keyPem?: string };
  /** More main.cf settings (name → value), applied last. */
  main?: Record<string, string>;
}

export interface QueuedMessage {
  queueId: string;
  queueName: string;
  recipients: { address: string; delayReason?: string }[];
}

export interface Postfix {
  /** smtpd's port on 127.0.0.1. */
  port: number;
  dir: string;
  /** The master process, parent of every Postfix process of this instance. */
  masterPid: number;
  /** The whole maillog so far. */
  maillog(): Promise<string>;
  /** Polls the maillog until `pattern` appears; resolves with the matching line. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** The messages in the queue (postqueue -j). */
  queue(): Promise<QueuedMessage[]>;
  /** Waits until the queue is empty. */
  waitForQueue(timeoutMs?: number): Promise<void>;
  /** Asks the queue manager to retry deferred mail now (postqueue -f). */
  flush(): Promise<void>;
  stop(): Promise<void>;
}

/** Why Postfix cannot run on this machine, or null when it can. */
export async function postfixUnavailable(): Promise<string | null> {
  try {
    await access(POSTFIX);
  } catch {
    return `${POSTFIX} is missing (Debian package postfix; scripts/ensure-deps.sh --test installs it)`;
  }
  if (process.getuid?.() !== 0) return 'Postfix needs root to start (its master runs services as user postfix)';
  return null;
}

/** Starts a private Postfix; rejects with Postfix's own words when it cannot. */
export async function startPostfix(o: PostfixOptions): Promise<Postfix> {
  const unavailable = await postfixUnavailable();
  if (unavailable) throw new Error(unavailable);
  const dir = await mkdtemp(path.join(tmpdir(), 'certgate-postfix-'));
  const etc = path.join(dir, 'etc');
  const port = await freePort();
  await Promise.all(['etc', 'spool', 'data', 'tls'].map((d) => mkdir(path.join(dir, d))));
  // Postfix refuses to run from a directory others may write; mkdtemp gives 0700, Postfix's user needs to enter it.
  await chmod(dir, 0o755);
  const { stdout: uid } = await run('id', ['-u', 'postfix']);
  await chown(path.join(dir, 'data'), Number(uid.trim()), -1);
  const tls = path.join(dir, 'tls');
  const files: Record<string, string | undefined> = {
    'server.crt': o.serverTls?.certPem, 'server.key': o.serverTls?.keyPem, 'ca.crt': o.serverTls?.caPem,
    'relay-ca.crt': o.clientTls?.caPem, 'client.crt': o.clientTls?.certPem, 'client.key': o.clientTls?.keyPem,
  };
  for (const [name, pem] of Object.entries(files)) if (pem) await writeFile(path.join(tls, name), pem, { mode: name.endsWith('.key') ? 0o600 : 0o644 });

  const mode = o.mode ?? 'mynetworks';
  const main: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: path.join(dir, 'spool'),
    data_directory: path.join(dir, 'data'),
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    myhostname: 'postfix.test.invalid',
    mydomain: 'test.invalid',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mydestination: '',
    relay_domains: '',
    local_recipient_maps: '',
    local_transport: 'error:local delivery disabled',
    alias_maps: '',
    alias_database: '',
    biff: 'no',
    default_process_limit: '200',
    relayhost: `[${o.relayhost.host}]:${o.relayhost.port}`,
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: mode === 'cert' ? 'permit_tls_all_clientcerts, reject' : 'permit_mynetworks, reject',
    smtpd_recipient_restrictions: '',
    smtpd_peername_lookup: 'no',
    smtp_tls_security_level: o.clientTls?.level ?? 'none',
    // Tests want to see a failed delivery at once, and a retry when they ask for one.
    smtp_connect_timeout: '10s',
    queue_run_delay: '1s',
    minimal_backoff_time: '1s',
    maximal_backoff_time: '10s',
    maillog_file_prefixes: dir,
    maillog_file: path.join(dir, 'maillog'),
  };
  if (o.serverTls) {
    Object.assign(main, {
      smtpd_tls_cert_file: path.join(tls, 'server.crt'),
      smtpd_tls_key_file: path.join(tls, 'server.key'),
      smtpd_tls_CAfile: path.join(tls, 'ca.crt'),
      smtpd_tls_security_level: 'may',
      smtpd_tls_ask_ccert: 'yes',
      smtpd_tls_received_header: 'yes',
    });
  }
  if (o.clientTls?.caPem) main.smtp_tls_CAfile = path.join(tls, 'relay-ca.crt');
  if (o.clientTls?.certPem) Object.assign(main, { smtp_tls_cert_file: path.join(tls, 'client.crt'), smtp_tls_key_file: path.join(tls, 'client.key') });
  Object.assign(main, o.main);
  await writeFile(path.join(etc, 'main.cf'), Object.entries(main).map(([k, v]) => `${k} = ${v}\n`).join(''));
  // Debian's stock services, the public smtp listener replaced by 127.0.0.1:port, no chroot.
  await writeFile(path.join(etc, 'master.cf'), `127.0.0.1:${port} inet n - n - - smtpd\n${MASTER_SERVICES}`);

  const postfix = (...args: string[]) => run(POSTFIX, ['-c', etc, ...args]);
  let masterPid: number;
  try {
    await postfix('check');
    await postfix('start');
    await waitForPort(port, 20_000);
    masterPid = Number((await readFile(path.join(dir, 'spool', 'pid', 'master.pid'), 'utf8')).trim());
  } catch (err) {
    const log = await readFile(path.join(dir, 'maillog'), 'utf8').catch(() => '');
    await postfix('abort').catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw new Error(`postfix did not start: ${(err as Error).message}\n${log.slice(-2000)}`, { cause: err });
  }

  const maillog = () => readFile(path.join(dir, 'maillog'), 'utf8').catch(() => '');
  const queue = async (): Promise<QueuedMessage[]> => {
    const { stdout } = await run('postqueue', ['-c', etc, '-j']);
    return stdout.split('\n').filter(Boolean).map((line) => {
      const j = JSON.parse(line) as { queue_id: string; queue_name: string; recipients: { address: string; delay_reason?: string }[] };
      return { queueId: j.queue_id, queueName: j.queue_name, recipients: j.recipients.map((r) => ({ address: r.address, delayReason: r.delay_reason })) };
    });
  };
  const poll = async <T>(what: string, timeoutMs: number, probe: () => Promise<T | null>): Promise<T> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await probe();
      if (v !== null) return v;
      if (Date.now() > deadline) throw new Error(`postfix: ${what} after ${timeoutMs} ms; maillog tail:\n${(await maillog()).slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  return {
    port,
    dir,
    masterPid,
    maillog,
    waitForLog: (pattern, timeoutMs = 30_000) =>
      poll(`no log line matching ${pattern}`, timeoutMs, async () => (await maillog()).split('\n').find((l) => pattern.test(l)) ?? null),
    queue,
    waitForQueue: async (timeoutMs = 30_000) => void (await poll('queue not empty', timeoutMs, async () => ((await queueFiles(dir)) === 0 ? true : null))),
    flush: async () => void (await run('postqueue', ['-c', etc, '-f'])),
    async stop() {
      await postfix('stop').catch(() => undefined);
      // master exits a moment after `stop`; abort whatever is left before removing its directory.
      for (let i = 0; i < 100 && (await postfix('status').then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 100));
      await postfix('abort').catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Files in the queue directories that hold mail (what `postfix.sh drain` waits on). */
async function queueFiles(dir: string): Promise<number> {
  let n = 0;
  for (const q of ['maildrop', 'incoming', 'active', 'deferred', 'hold']) {
    const entries = await readdir(path.join(dir, 'spool', q), { recursive: true, withFileTypes: true }).catch(() => []);
    n += entries.filter((e) => e.isFile()).length;
  }
  return n;
}

const MASTER_SERVICES = `pickup     unix n - n 60 1 pickup
cleanup    unix n - n - 0 cleanup
qmgr       unix n - n 300 1 qmgr
tlsmgr     unix - - n 1000? 1 tlsmgr
rewrite    unix - - n - - trivial-rewrite
bounce     unix - - n - 0 bounce
defer      unix - - n - 0 bounce
trace      unix - - n - 0 bounce
verify     unix - - n - 1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp       unix - - n - - smtp
relay      unix - - n - - smtp
showq      unix n - n - - showq
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
`;
