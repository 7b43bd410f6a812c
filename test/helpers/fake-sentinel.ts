// A small fake Redis Sentinel, for a fault no real one makes on demand: it answers
// `SENTINEL get-master-addr-by-name` with an address the test names, can hold that answer
// until the test releases it, and publishes `+switch-master` to its subscribers when the
// test says so. Everything else gets an error, as from a server that does not know it.
import { createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';

export interface FakeSentinel {
  port: number;
  /** Commands received so far, each as its words (`SENTINEL get-master-addr-by-name m`). */
  commands: string[];
  /** Sockets subscribed to +switch-master now. */
  subscribers(): number;
  /** Master-address requests waiting for release(). */
  held(): number;
  /** From now on, master-address requests wait for release(). */
  hold(): void;
  /** Answers the waiting requests and stops holding. */
  release(): void;
  /** Publishes +switch-master (to the same address: what clients do with it is the point). */
  switchMaster(): void;
  close(): Promise<void>;
}

const bulk = (s: string): string => `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
const array = (items: string[]): string => `*${items.length}\r\n${items.map(bulk).join('')}`;

/** Parses complete RESP arrays of bulk strings off the front of `buf`; answers them and what is left. */
function parse(buf: Buffer): { commands: string[][]; rest: Buffer } {
  const commands: string[][] = [];
  let at = 0;
  for (;;) {
    const words: string[] = [];
    let p = at;
    const line = (): string | null => {
      const end = buf.indexOf('\r\n', p);
      if (end < 0) return null;
      const text = buf.toString('latin1', p, end);
      p = end + 2;
      return text;
    };
    const head = line();
    if (head === null || !head.startsWith('*')) break;
    let complete = true;
    for (let i = 0; i < Number(head.slice(1)); i++) {
      const len = line();
      if (len === null || p + Number(len.slice(1)) + 2 > buf.length) {
        complete = false;
        break;
      }
      words.push(buf.toString('utf8', p, p + Number(len.slice(1))));
      p += Number(len.slice(1)) + 2;
    }
    if (!complete) break;
    commands.push(words);
    at = p;
  }
  return { commands, rest: buf.subarray(at) };
}

/** `master`: the name it watches and the address it gives for it. */
export async function startFakeSentinel(master: { name: string; host: string; port: number }): Promise<FakeSentinel> {
  const commands: string[] = [];
  const sockets = new Set<Socket>();
  const subscribed = new Set<Socket>();
  let holding = false;
  let waiting: Socket[] = [];
  const address = (): string => array([master.host, String(master.port)]);

  const server: Server = createServer((socket) => {
    let buf: Buffer = Buffer.alloc(0);
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      sockets.delete(socket);
      subscribed.delete(socket);
    });
    socket.on('data', (d: Buffer) => {
      const { commands: parsed, rest } = parse(Buffer.concat([buf, d]));
      buf = rest;
      for (const words of parsed) {
        commands.push(words.join(' '));
        const [cmd, sub, name] = [words[0]?.toUpperCase(), words[1]?.toLowerCase(), words[2]];
        if (cmd === 'SENTINEL' && sub === 'get-master-addr-by-name') {
          if (name !== master.name) socket.write('*-1\r\n');
          else if (holding) waiting.push(socket);
          else socket.write(address());
        } else if (cmd === 'SENTINEL' && sub === 'sentinels') {
          socket.write('*0\r\n');
        } else if (cmd === 'SUBSCRIBE') {
          subscribed.add(socket);
          words.slice(1).forEach((channel, i) => socket.write(`*3\r\n${bulk('subscribe')}${bulk(channel)}:${i + 1}\r\n`));
        } else {
          socket.write(`-ERR unknown command '${words[0] ?? ''}'\r\n`);
        }
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    port,
    commands,
    subscribers: () => subscribed.size,
    held: () => waiting.length,
    hold: () => (holding = true),
    release() {
      holding = false;
      for (const s of waiting) s.write(address());
      waiting = [];
    },
    switchMaster() {
      const text = `${master.name} ${master.host} ${master.port} ${master.host} ${master.port}`;
      for (const s of subscribed) s.write(array(['message', '+switch-master', text]));
    },
    async close() {
      const closed = new Promise((r) => server.close(r));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
