// A standalone SMTP sink for the demo: accepts every message on 127.0.0.1 and logs it as one JSON line.
//   tsx scripts/sink.ts [--port 2526] [--lines 12]
// Env: SINK_PORT (default 2526). Stops on SIGINT/SIGTERM.
import { startSink, type SinkMessage } from '../test/helpers/smtp-sink.ts';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const port = Number(arg('port') ?? process.env.SINK_PORT ?? 2526);
const lines = Number(arg('lines') ?? 12);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  process.stderr.write(`sink: bad port "${arg('port') ?? process.env.SINK_PORT}"\n`);
  process.exit(2);
}

function log(m: SinkMessage): void {
  const text = m.raw.toString('utf8');
  const head = text.split(/\r?\n/).slice(0, lines);
  process.stdout.write(
    JSON.stringify({
      time: m.receivedAt.toISOString(),
      msg: 'message received',
      from: m.from,
      to: m.to,
      bytes: m.raw.length,
      tls: m.secure,
      head,
    }) + '\n',
  );
}

try {
  const sink = await startSink({ port, onMessage: log });
  process.stdout.write(JSON.stringify({ time: new Date().toISOString(), msg: 'sink listening', host: sink.host, port: sink.port }) + '\n');
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      void sink.stop().then(() => process.exit(0));
      setTimeout(() => process.exit(0), 3000).unref();
    });
  }
} catch (err) {
  process.stderr.write(`sink: cannot listen on 127.0.0.1:${port}: ${(err as Error).message}\n`);
  process.exit(1);
}
