// PROXY protocol headers as a balancer writes them, for clients in tests and benchmarks that
// stand in for one (HAProxy's proxy-protocol.txt; test/helpers/haproxy.ts runs the real one).
import { isIPv4, SocketAddress } from 'node:net';

export interface Endpoint { address: string; port: number }

/** `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` (send-proxy). */
export function proxyHeaderV1(source: Endpoint, destination: Endpoint): Buffer {
  const family = isIPv4(source.address) ? 'TCP4' : 'TCP6';
  return Buffer.from(`PROXY ${family} ${source.address} ${destination.address} ${source.port} ${destination.port}\r\n`, 'ascii');
}

/** The 12 bytes every v2 header begins with. */
export const PROXY_V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** The binary header with the PROXY command over TCP (send-proxy-v2), or LOCAL (a health check) without endpoints. */
export function proxyHeaderV2(source: Endpoint | null, destination?: Endpoint): Buffer {
  if (source === null || destination === undefined) return Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  const v4 = isIPv4(source.address);
  const addressBytes = (a: string) => (v4 ? Buffer.from(a.split('.').map(Number)) : ipv6Bytes(a));
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(source.port, 0);
  ports.writeUInt16BE(destination.port, 2);
  const block = Buffer.concat([addressBytes(source.address), addressBytes(destination.address), ports]);
  const fixed = Buffer.from([0x21, v4 ? 0x11 : 0x21, 0, 0]);
  fixed.writeUInt16BE(block.length, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, fixed, block]);
}

function ipv6Bytes(address: string): Buffer {
  // SocketAddress canonicalizes; expand "::" by hand to the eight groups.
  let text = new SocketAddress({ address, family: 'ipv6' }).address;
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const groups = (s: string) => (s === '' ? [] : s.split(':'));
  const left = groups(head);
  const right = tail === undefined ? [] : groups(tail);
  const all = [...left, ...new Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
