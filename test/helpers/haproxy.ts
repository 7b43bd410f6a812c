// A real HAProxy (Debian `haproxy`) in TCP mode in front of certgate workers, run in the
// foreground from a configuration file the test writes, on loopback only. Each frontend
// balances over its backends and sends the PROXY protocol as asked (`send-proxy`,
// `send-proxy-v2`, or nothing: the plain balancer that SPEC §2.5 warns about).
//
// One process per test file serves every frontend the file needs. Its pid is recorded and
// only that process is stopped. With `smtpCheck`, HAProxy health-checks each backend the
// way an operator would (`option smtpchk`, a PROXY header on the check connection: v2
// LOCAL, v1 a TCP4 line naming the check connection's own endpoints); `serverStates()`
// reads what it concluded from its stats socket.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort, waitForPort } from './ports.ts';
import { startDaemon, stopChild } from './processes.ts';

export type ProxyMode = 'v1' | 'v2' | 'none';

export interface HaproxyFrontend {
  name: string;
  proxy: ProxyMode;
  backends: Array<{ host?: string; port: number }>;
  /** More words on each `server` line, e.g. `proxy-v2-options crc32c`. */
  serverOptions?: string;
  /** HAProxy checks each backend with HELO (`option smtpchk`) every 300 ms. */
  smtpCheck?: boolean;
}

export interface TestHaproxy {
  pid: number;
  configPath: string;
  /** The loopback port of each frontend, by name. */
  ports: Record<string, number>;
  /** `server name → UP/DOWN/...` of one frontend's backends, from the stats socket. */
  serverStates(frontend: string): Promise<Record<string, string>>;
  /** The last lines HAProxy wrote (its log goes to stderr), for failure messages. */
  log(): string;
  stop(): Promise<void>;
}

const SEND_PROXY: Record<ProxyMode, string> = { v1: 'send-proxy', v2: 'send-proxy-v2', none: '' };

export async function startHaproxy(frontends: HaproxyFrontend[]): Promise<TestHaproxy> {
  const dir = await mkdtemp(path.join(tmpdir(), 'certgate-haproxy-'));
  const ports: Record<string, number> = {};
  for (const f of frontends) ports[f.name] = await freePort();
  const statsSocket = path.join(dir, 'stats.sock');
  const lines = [
    'global',
    '  maxconn 2000',
    '  log stderr format raw local0 info',
    `  stats socket ${statsSocket} mode 600 level operator`,
    'defaults',
    '  mode tcp',
    '  log global',
    '  option tcplog',
    '  timeout connect 5s',
    '  timeout client 120s',
    '  timeout server 120s',
  ];
  for (const f of frontends) {
    lines.push(
      `frontend fe_${f.name}`,
      `  bind 127.0.0.1:${ports[f.name]}`,
      `  default_backend be_${f.name}`,
      `backend be_${f.name}`,
      '  balance roundrobin',
      ...(f.smtpCheck ? ['  option smtpchk HELO haproxy.test', '  default-server inter 300ms fall 2 rise 1'] : []),
      ...f.backends.map((b, i) =>
        ['  server', `w${i}`, `${b.host ?? '127.0.0.1'}:${b.port}`, SEND_PROXY[f.proxy], f.serverOptions ?? '', f.smtpCheck ? 'check' : '']
          .filter(Boolean).join(' ')),
    );
  }
  const configPath = path.join(dir, 'haproxy.cfg');
  await writeFile(configPath, `${lines.join('\n')}\n`);

  const haproxy = startDaemon('haproxy', 'haproxy', ['-db', '-f', configPath]);
  const { child } = haproxy;
  const stop = async () => {
    await stopChild(child, 5_000);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await Promise.race([Promise.all(Object.values(ports).map((p) => waitForPort(p, 15_000))), haproxy.failed]);
  } catch (err) {
    await stop();
    throw new Error(`cannot start haproxy (is it installed? scripts/ensure-deps.sh --test): ${(err as Error).message}: ${haproxy.output().slice(-2000)}`, { cause: err });
  }
  if (child.pid === undefined) throw new Error('haproxy has no pid');

  return {
    pid: child.pid,
    configPath,
    ports,
    log: haproxy.output,
    async serverStates(frontend) {
      const csv = await statsCommand(statsSocket, 'show stat\n');
      const [head = '', ...rows] = csv.split('\n');
      const columns = head.replace(/^# /, '').split(',');
      const at = (name: string) => columns.indexOf(name);
      const states: Record<string, string> = {};
      for (const row of rows) {
        const cells = row.split(',');
        if (cells[at('pxname')] === `be_${frontend}` && !['FRONTEND', 'BACKEND'].includes(cells[at('svname')] ?? '')) {
          states[cells[at('svname')] ?? ''] = cells[at('status')] ?? '';
        }
      }
      return states;
    },
    stop,
  };
}

function statsCommand(socketPath: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let answer = '';
    const s = net.connect(socketPath, () => s.end(command));
    s.setEncoding('utf8');
    s.on('data', (chunk: string) => (answer += chunk));
    s.on('end', () => resolve(answer));
    s.on('error', reject);
    s.setTimeout(10_000, () => s.destroy(new Error('haproxy stats socket did not answer')));
  });
}
