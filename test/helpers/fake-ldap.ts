/**
 * A tiny LDAP server for the faults no real directory makes on demand: it
 * accepts any simple bind, then answers a search as its `mode` says, ignoring
 * the request's sizeLimit and timeLimit as a hostile or broken server would:
 *   - `endless`: SearchResultEntry after SearchResultEntry (512 KiB each), as fast as
 *     the client reads, never a SearchResultDone;
 *   - `many`: the same with small entries (entry counting, not byte counting);
 *   - `huge`: one entry with a 10 MB value, then SearchResultDone;
 *   - `silent`: nothing at all after the bind;
 *   - `one`: one small entry (uid=`ok`), then SearchResultDone.
 *
 * Requests are framed with BER's definite lengths (RFC 4511 §5.1); only the
 * messageID and the protocolOp tag are read. Loopback only; stop() ends every
 * connection.
 */
import net from 'node:net';
import { tlv } from './der.ts';
import { listening } from './ports.ts';

export type FakeLdapMode = 'endless' | 'many' | 'huge' | 'silent' | 'one';

export interface FakeLdap {
  url: string;
  port: number;
  mode: FakeLdapMode;
  /** Connections accepted so far. */
  connections: number;
  /** Bytes of search answers written so far. */
  bytesSent: number;
  stop(): Promise<void>;
}

const integer = (tag: number, v: number): Buffer => {
  const bytes: number[] = [];
  let x = v;
  do {
    bytes.unshift(x & 0xff);
    x >>= 8;
  } while (x > 0);
  if ((bytes[0] as number) & 0x80) bytes.unshift(0);
  return tlv(tag, Buffer.from(bytes));
};
const octets = (s: string | Buffer): Buffer => tlv(0x04, Buffer.isBuffer(s) ? s : Buffer.from(s));
const message = (id: number, op: Buffer): Buffer => tlv(0x30, integer(0x02, id), op);
const result = (tag: number): Buffer => tlv(tag, integer(0x0a, 0), octets(''), octets(''));

function entry(id: number, dn: string, attributes: Record<string, string | Buffer>): Buffer {
  const attrs = Object.entries(attributes).map(([type, value]) => tlv(0x30, octets(type), tlv(0x31, octets(value))));
  return message(id, tlv(0x64, octets(dn), tlv(0x30, ...attrs)));
}

/** Splits complete LDAPMessages off the front of `buf`: [messageId, protocolOp tag] each. */
function takeMessages(buf: Buffer): { messages: Array<[number, number]>; rest: Buffer } {
  const messages: Array<[number, number]> = [];
  let at = 0;
  for (;;) {
    if (buf.length - at < 2) break;
    let length = buf[at + 1] as number;
    let header = 2;
    if (length & 0x80) {
      const n = length & 0x7f;
      if (buf.length - at < 2 + n) break;
      length = 0;
      for (let i = 0; i < n; i++) length = length * 256 + (buf[at + 2 + i] as number);
      header = 2 + n;
    }
    if (buf.length - at < header + length) break;
    const idLength = buf[at + header + 1] as number;
    let id = 0;
    for (let i = 0; i < idLength; i++) id = id * 256 + (buf[at + header + 2 + i] as number);
    messages.push([id, buf[at + header + 2 + idLength] as number]);
    at += header + length;
  }
  return { messages, rest: buf.subarray(at) };
}

export async function startFakeLdap(mode: FakeLdapMode): Promise<FakeLdap> {
  const sockets = new Set<net.Socket>();
  const big = Buffer.alloc(512 * 1024, 'x');
  const server = net.createServer((socket) => {
    handle.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let pending: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      const { messages, rest } = takeMessages(Buffer.concat([pending, chunk]));
      pending = rest;
      for (const [id, op] of messages) {
        if (op === 0x60) socket.write(message(id, result(0x61))); // BindRequest → success
        else if (op === 0x42) socket.end(); // UnbindRequest
        else if (op === 0x63) search(socket, id); // SearchRequest
      }
    });
  });
  const search = (socket: net.Socket, id: number): void => {
    const send = (b: Buffer): boolean => {
      handle.bytesSent += b.length;
      return socket.write(b);
    };
    switch (handle.mode) {
      case 'silent':
        return;
      case 'one':
        send(entry(id, 'uid=ok,dc=example,dc=com', { uid: 'ok' }));
        send(message(id, result(0x65)));
        return;
      case 'huge':
        send(entry(id, 'uid=huge,dc=example,dc=com', { uid: 'huge', description: Buffer.alloc(10 * 1024 * 1024, 'y') }));
        send(message(id, result(0x65)));
        return;
      case 'endless':
      case 'many': {
        let n = 0;
        const pump = (): void => {
          // Bounded per turn; continues on 'drain' for as long as the client reads.
          for (let i = 0; i < 1000 && !socket.destroyed; i++) {
            const value = handle.mode === 'endless' ? big : `v${n}`;
            if (!send(entry(id, `uid=u${n++},dc=example,dc=com`, { uid: `u${n}`, description: value }))) {
              socket.once('drain', pump);
              return;
            }
          }
          if (!socket.destroyed) setImmediate(pump);
        };
        pump();
        return;
      }
    }
  };
  const port = await listening(server);
  const handle: FakeLdap = {
    url: `ldap://127.0.0.1:${port}`,
    port,
    mode,
    connections: 0,
    bytesSent: 0,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return handle;
}
