// Throwaway Redis servers for tests: one on a free loopback port (startRedis), and a
// highly available set (startRedisHa: a master, a replica and three real redis-sentinel
// processes watching them). Tests may stop, freeze (SIGSTOP) and restart them.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort, waitForPort } from './ports.ts';
import { recordPid } from './processes.ts';

export interface TestRedis {
  url: string;
  port: number;
  /** The running server's pid (changes with restart). */
  pid(): number | undefined;
  /** Sends a signal to the running server (SIGSTOP freezes it, SIGCONT thaws it, SIGKILL kills it). */
  signal(sig: NodeJS.Signals): void;
  /** Saves the data (to the server's own directory) and exits, as an orderly stop: restart() loads it again. */
  shutdownSave(): Promise<void>;
  /** Starts the server again on the same port and directory (with whatever data it saved). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface RedisOptions {
  /** Extra redis-server arguments (e.g. --replicaof). */
  args?: string[];
}

/** A throwaway redis-server on a free loopback port, without automatic persistence. */
export async function startRedis(o: RedisOptions = {}): Promise<TestRedis> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'certgate-redis-'));
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...(o.args ?? [])];
  let child: ChildProcess;
  const launch = async (): Promise<void> => {
    child = spawn('redis-server', args, { stdio: 'ignore' });
    recordPid('redis-server', child.pid);
    const c = child;
    const failed = new Promise<never>((_, reject) => {
      c.once('error', (e) => reject(new Error(`cannot start redis-server (is it installed?): ${e.message}`)));
      c.once('exit', (code) => reject(new Error(`redis-server exited with ${code}`)));
    });
    failed.catch(() => undefined); // after start-up, an exit is expected (stop) and not an error
    await Promise.race([waitForPort(port), failed]);
  };
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  const exited = (): Promise<unknown> => (running() ? new Promise((r) => child.once('exit', r)) : Promise.resolve());
  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    pid: () => (running() ? child.pid : undefined),
    signal(sig) {
      if (running()) child.kill(sig);
    },
    async shutdownSave() {
      const gone = exited();
      const c = new Redis({ port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      c.on('error', () => undefined);
      await c.connect();
      await c.call('SHUTDOWN', 'SAVE').catch(() => undefined); // the connection closes without an answer
      c.disconnect();
      await gone;
    },
    async restart() {
      if (running()) throw new Error('redis-server is still running');
      await launch();
    },
    async stop() {
      if (running()) {
        const gone = exited();
        child.kill('SIGCONT'); // a frozen server must run to die of SIGKILL's reaping
        child.kill('SIGKILL');
        await gone;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface TestRedisHa {
  master: TestRedis;
  replica: TestRedis;
  masterName: string;
  /** `host:port,host:port,host:port` for REDIS_SENTINELS. */
  sentinels: string;
  sentinelPorts: number[];
  /** The master's address as the sentinels name it now. */
  currentMaster(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * A master, its replica and three sentinels (quorum 2, a master is down after 1 s),
 * resolved once the sentinels know the replica and each other, so that a failover can
 * happen at once.
 */
export async function startRedisHa(masterName = 'certgate'): Promise<TestRedisHa> {
  const master = await startRedis();
  const replica = await startRedis({ args: ['--replicaof', '127.0.0.1', String(master.port)] });
  const dir = await mkdtemp(join(tmpdir(), 'certgate-sentinel-'));
  const sentinelPorts: number[] = [];
  const children: ChildProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(children.map(async (c) => {
      if (c.exitCode !== null || c.signalCode !== null) return;
      const gone = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await gone;
    }));
    await Promise.all([master.stop(), replica.stop(), rm(dir, { recursive: true, force: true })]);
  };
  try {
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const conf = join(dir, `sentinel-${i}.conf`);
      await writeFile(conf, [
        `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`,
        `sentinel monitor ${masterName} 127.0.0.1 ${master.port} 2`,
        `sentinel down-after-milliseconds ${masterName} 1000`,
        `sentinel failover-timeout ${masterName} 5000`,
        `sentinel parallel-syncs ${masterName} 1`, '',
      ].join('\n'));
      const child = spawn('redis-sentinel', [conf], { stdio: 'ignore' });
      recordPid('redis-sentinel', child.pid);
      children.push(child);
      const failed = new Promise<never>((_, reject) => {
        child.once('error', (e) => reject(new Error(`cannot start redis-sentinel (apt-get install redis-sentinel): ${e.message}`)));
        child.once('exit', (code) => reject(new Error(`redis-sentinel exited with ${code}`)));
      });
      failed.catch(() => undefined);
      await Promise.race([waitForPort(port), failed]);
      sentinelPorts.push(port);
    }
    // Sentinels find the replica through the master and each other through hello messages.
    const deadline = Date.now() + 20_000;
    for (const port of sentinelPorts) {
      const s = new Redis({ port, maxRetriesPerRequest: 1 });
      try {
        for (;;) {
          const replicas = (await s.call('SENTINEL', 'REPLICAS', masterName)) as unknown[];
          const peers = (await s.call('SENTINEL', 'SENTINELS', masterName)) as unknown[];
          if (replicas.length >= 1 && peers.length >= 2) break;
          if (Date.now() > deadline) throw new Error(`sentinel ${port} sees ${replicas.length} replicas and ${peers.length} other sentinels after 20 s`);
          await new Promise((r) => setTimeout(r, 100));
        }
      } finally {
        s.disconnect();
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    master, replica, masterName, sentinelPorts,
    sentinels: sentinelPorts.map((p) => `127.0.0.1:${p}`).join(','),
    async currentMaster() {
      const s = new Redis({ port: sentinelPorts[0], maxRetriesPerRequest: 1 });
      try {
        const [, port] = (await s.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', masterName)) as [string, string];
        return Number(port);
      } finally {
        s.disconnect();
      }
    },
    stop,
  };
}
