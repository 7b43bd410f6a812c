// What a worker shows the outside once, however many processes serve for it (SPEC §1):
// the metrics port (`GET /metrics` for all processes together, `GET /health` for load
// balancer and Kubernetes probes) and the heartbeat, one entry in GET /v1/workers. It runs
// in the worker's only process, or in the cluster primary (worker/cluster.ts).
import http from 'node:http';
import type { Redis } from 'ioredis';
import type { MinimalLogger } from '../shared/util/logger.ts';
import { keys } from '../shared/redis/keys.ts';
import { publishHeartbeat } from '../shared/status/workers.ts';
import { Coalescer } from '../shared/util/coalescer.ts';
import { combineStatus, readiness } from './health.ts';
import type { ProcessReport } from './engine.ts';

const HEARTBEAT_MS = 5_000;

export interface FrontOptions {
  workerId: string;
  logger: MinimalLogger;
  /** For heartbeats. */
  redis: Redis;
  /** By process slot; null: not running or silent. */
  reports(): ReadonlyArray<ProcessReport | null>;
  /** The Prometheus text of all processes. */
  metrics(): Promise<{ contentType: string; body: string }>;
}

export class Front {
  private server: http.Server | null = null;
  private timer: NodeJS.Timeout | null = null;
  private draining = false;
  private stopped = false;
  private lastError = '';
  /** At most one beat in flight and one queued, however long a frozen Redis holds them. */
  private readonly beats = new Coalescer();

  constructor(private readonly o: FrontOptions) {}

  /** Serves the metrics port; resolves once listening. */
  async listen(host: string, port: number): Promise<void> {
    const server = http.createServer((req, res) => this.answer(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.server = server;
  }

  /** Starts the heartbeat. */
  start(): void {
    this.timer = setInterval(() => this.beat(), HEARTBEAT_MS);
    this.beat();
  }

  /** A process applied a configuration: say so now rather than at the next beat. */
  publishSoon(): void {
    if (!this.stopped) this.beat();
  }

  /** SIGTERM: /health turns 503 at once, so that balancers stop sending new sessions. */
  setDraining(): void {
    this.draining = true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.beats.idle(); // a beat in flight would write the entry again after it is deleted
    await this.o.redis.hdel(keys.workers, this.o.workerId).catch(() => undefined);
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private answer(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = req.url?.split('?')[0];
    if (req.method !== 'GET' || (path !== '/metrics' && path !== '/health')) {
      res.writeHead(404).end();
      return;
    }
    if (path === '/health') {
      const r = readiness(this.o.reports(), this.draining);
      const body = r.ready ? { status: 'ok' } : { status: 'unready', reasons: r.reasons };
      res.writeHead(r.ready ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      return;
    }
    this.o.metrics().then(
      (m) => res.writeHead(200, { 'content-type': m.contentType }).end(m.body),
      (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics unavailable: ${err.message}\n`),
    );
  }

  private beat(): void {
    void this.beats.run('beat', () => this.heartbeat());
  }

  private async heartbeat(): Promise<void> {
    if (this.stopped) return;
    const running = this.o.reports().filter((r): r is ProcessReport => r !== null);
    if (running.length === 0) return; // nothing serves: the entry ages out of GET /v1/workers
    try {
      await publishHeartbeat(this.o.redis, combineStatus(this.o.workerId, running, new Date()));
      this.lastError = '';
    } catch (err) {
      const message = (err as Error).message;
      if (message !== this.lastError) this.o.logger.warn({ err: message }, 'heartbeat failed');
      this.lastError = message;
    }
  }
}
