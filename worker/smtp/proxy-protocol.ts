// The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a TCP
// load balancer sends before the client's first byte, so that a listener behind it learns
// the real client address (SPEC §2.5 `proxyProtocol`). smtp-server reads version 1 only;
// HAProxy `send-proxy-v2`, nginx and the cloud network balancers send version 2.
//
// Pure: bytes in, a verdict out, no I/O. What it promises:
// - Incremental: `parseProxyHeader` takes every byte received so far and answers
//   `incomplete` for every proper prefix of a valid header, so the caller may feed it the
//   stream in any pieces. It answers `invalid` as soon as the bytes cannot begin a valid
//   header (a client speaking SMTP or TLS straight away is refused at its first byte).
// - Bounded: a version 1 header is at most 107 bytes (the protocol's own limit). A
//   version 2 header may declare up to 16 + 65535 bytes; certgate takes at most
//   V2_MAX_BYTES (4 KiB) and refuses a larger declared length at once, when the 16 fixed
//   bytes are in. Real senders stay far below it (HAProxy: addresses plus ALPN, authority,
//   unique id and SSL TLVs, a few hundred bytes; AWS/Azure/GCP add one short id TLV), and
//   the bound is what each connection waiting for its header may make the worker hold.
// - Never beyond the header: `length` is the header's size; the bytes after it (a TLS
//   ClientHello, SMTP commands) belong to the caller, untouched.
// - Strict: only an address that the header states in its canonical, checked form comes
//   out. Anything else is `invalid` with a reason for the log.
// - `local` means "use the real connection endpoints", as the protocol specifies for the
//   v2 LOCAL command (a balancer's own health check) and v1 UNKNOWN, and as certgate also
//   decides for v2 PROXY over AF_UNSPEC and AF_UNIX (a client the balancer could not
//   name by IP address, e.g. a local process on its host); UDP is refused (no SMTP).
import { SocketAddress } from 'node:net';

/** The v1 line limit, CRLF included (proxy-protocol.txt §2.1: "PROXY UNKNOWN" + 94 bytes + CRLF). */
export const V1_MAX_BYTES = 107;
/** What certgate accepts of a v2 header (16 fixed bytes + addresses + TLVs); see the module header. */
export const V2_MAX_BYTES = 4096;

export interface ProxyEndpoint { address: string; port: number }

export type ProxyHeader =
  | { version: 1 | 2; command: 'proxy'; family: 4 | 6; source: ProxyEndpoint; destination: ProxyEndpoint }
  | { version: 1 | 2; command: 'local' };

export type ProxyParse =
  /** Every byte so far is a valid beginning; more are needed. */
  | { state: 'incomplete' }
  /** A complete header of `length` bytes; what follows it is not the header's. */
  | { state: 'header'; header: ProxyHeader; length: number }
  | { state: 'invalid'; reason: string };

const V1_PREFIX = Buffer.from('PROXY ', 'ascii');
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_FIXED_BYTES = 16;
const CR = 0x0d;
const LF = 0x0a;

const INCOMPLETE: ProxyParse = { state: 'incomplete' };
const invalid = (reason: string): ProxyParse => ({ state: 'invalid', reason });

/** Parses the PROXY header at the start of `bytes` (everything received so far). */
export function parseProxyHeader(bytes: Uint8Array): ProxyParse {
  if (bytes.length === 0) return INCOMPLETE;
  if (bytes[0] === V1_PREFIX[0]) return parseV1(bytes);
  if (bytes[0] === V2_SIGNATURE[0]) return parseV2(bytes);
  return invalid('not a PROXY protocol header');
}

/**
 * The client of a connection that began with `header`: the header's source, or with `local`
 * the connection's own peer (the balancer itself, e.g. its health check).
 */
export function proxiedClient(header: ProxyHeader, peer: ProxyEndpoint): ProxyEndpoint {
  return header.command === 'proxy' ? header.source : peer;
}

// ---------------------------------------------------------------- version 1 (text)

function parseV1(bytes: Uint8Array): ProxyParse {
  const limit = Math.min(bytes.length, V1_MAX_BYTES);
  for (let i = 0; i < limit; i++) {
    const byte = bytes[i]!;
    if (i < V1_PREFIX.length) {
      if (byte !== V1_PREFIX[i]) return invalid('not a PROXY protocol header');
    } else if (byte === LF) {
      if (bytes[i - 1] !== CR) return invalid('v1: line feed without carriage return');
      return parseV1Line(Buffer.from(bytes.subarray(0, i - 1)).toString('ascii'), i + 1);
    } else if (byte === CR) {
      if (i + 1 < bytes.length && bytes[i + 1] !== LF) return invalid('v1: carriage return not followed by line feed');
    } else if (byte < 0x20 || byte > 0x7e) {
      return invalid(`v1: control or non-ASCII byte 0x${byte.toString(16).padStart(2, '0')} in the header line`);
    }
  }
  return bytes.length >= V1_MAX_BYTES ? invalid(`v1: no CRLF within ${V1_MAX_BYTES} bytes`) : INCOMPLETE;
}

function parseV1Line(line: string, length: number): ProxyParse {
  const parts = line.split(' ');
  const protocol = parts[1];
  // proxy-protocol.txt: after UNKNOWN the receiver ignores everything up to the CRLF.
  if (protocol === 'UNKNOWN') return { state: 'header', header: { version: 1, command: 'local' }, length };
  if (protocol !== 'TCP4' && protocol !== 'TCP6') return invalid(`v1: protocol ${JSON.stringify(protocol ?? '')} is not TCP4, TCP6 or UNKNOWN`);
  if (parts.length !== 6) return invalid(`v1: ${protocol} needs source and destination addresses and ports, single spaces apart`);
  const family = protocol === 'TCP4' ? 4 : 6;
  const [, , sourceText, destinationText, sourcePortText, destinationPortText] = parts as [string, string, string, string, string, string];
  const source = v1Address(sourceText, family);
  const destination = v1Address(destinationText, family);
  const sourcePort = v1Port(sourcePortText);
  const destinationPort = v1Port(destinationPortText);
  if (source === null) return invalid(`v1: source address ${JSON.stringify(sourceText)} is not an IPv${family} address`);
  if (destination === null) return invalid(`v1: destination address ${JSON.stringify(destinationText)} is not an IPv${family} address`);
  if (sourcePort === null) return invalid(`v1: source port ${JSON.stringify(sourcePortText)} is not 0-65535`);
  if (destinationPort === null) return invalid(`v1: destination port ${JSON.stringify(destinationPortText)} is not 0-65535`);
  return {
    state: 'header',
    header: { version: 1, command: 'proxy', family, source: { address: source, port: sourcePort }, destination: { address: destination, port: destinationPort } },
    length,
  };
}

const IPV4_OCTET = '(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const IPV4 = new RegExp(`^${IPV4_OCTET}(?:\\.${IPV4_OCTET}){3}$`);
const IPV6_CHARS = /^[0-9A-Fa-f:.]{2,45}$/;

/** The canonical text of a v1 address of the stated family (dotted quad without leading zeros; RFC 5952 IPv6), or null. */
function v1Address(text: string, family: 4 | 6): string | null {
  if (family === 4) return IPV4.test(text) ? text : null;
  // node:net would also take a zone id ("%eth0"); the character check keeps it out.
  if (!IPV6_CHARS.test(text)) return null;
  try {
    return new SocketAddress({ address: text, family: 'ipv6' }).address;
  } catch {
    return null;
  }
}

function v1Port(text: string): number | null {
  if (!/^(?:0|[1-9][0-9]{0,4})$/.test(text)) return null;
  const port = Number(text);
  return port <= 65535 ? port : null;
}

// ---------------------------------------------------------------- version 2 (binary)

const COMMAND_LOCAL = 0x0;
const COMMAND_PROXY = 0x1;
/** Address block sizes by the family/transport byte, for the PROXY command. */
const ADDRESS_BYTES: Record<number, number> = { 0x00: 0, 0x11: 12, 0x21: 36, 0x31: 216 };
const TLV_CRC32C = 0x03;

function parseV2(bytes: Uint8Array): ProxyParse {
  const signatureBytes = Math.min(bytes.length, V2_SIGNATURE.length);
  for (let i = 0; i < signatureBytes; i++) {
    if (bytes[i] !== V2_SIGNATURE[i]) return invalid('not a PROXY protocol header');
  }
  if (bytes.length > V2_SIGNATURE.length) {
    const versionCommand = bytes[12]!;
    if (versionCommand >> 4 !== 2) return invalid(`v2: version ${versionCommand >> 4} is not 2`);
    const command = versionCommand & 0x0f;
    if (command !== COMMAND_LOCAL && command !== COMMAND_PROXY) return invalid(`v2: command ${command} is neither LOCAL nor PROXY`);
  }
  if (bytes.length < V2_FIXED_BYTES) return INCOMPLETE;

  const command = bytes[12]! & 0x0f;
  const familyTransport = bytes[13]!;
  const declared = (bytes[14]! << 8) | bytes[15]!;
  const length = V2_FIXED_BYTES + declared;
  if (length > V2_MAX_BYTES) return invalid(`v2: header of ${length} bytes is over certgate's limit of ${V2_MAX_BYTES}`);
  const addressBytes = ADDRESS_BYTES[familyTransport];
  if (command === COMMAND_PROXY) {
    if (addressBytes === undefined) return invalid(`v2: address family/transport 0x${familyTransport.toString(16).padStart(2, '0')} is not TCP over IPv4/IPv6, UNIX stream or UNSPEC`);
    if (declared < addressBytes) return invalid(`v2: length ${declared} is shorter than the ${addressBytes} address bytes of its family`);
  }
  if (bytes.length < length) return INCOMPLETE;

  // proxy-protocol.txt §2.2: with LOCAL the receiver discards the whole block, family included.
  if (command === COMMAND_LOCAL) return { state: 'header', header: { version: 2, command: 'local' }, length };
  const header = Buffer.from(bytes.buffer, bytes.byteOffset, length);
  const tlvError = checkTlvs(header, V2_FIXED_BYTES + addressBytes!);
  if (tlvError) return invalid(`v2: ${tlvError}`);
  if (familyTransport === 0x11) {
    return {
      state: 'header',
      header: { version: 2, command: 'proxy', family: 4, source: { address: ipv4(header, 16), port: header.readUInt16BE(24) }, destination: { address: ipv4(header, 20), port: header.readUInt16BE(26) } },
      length,
    };
  }
  if (familyTransport === 0x21) {
    return {
      state: 'header',
      header: { version: 2, command: 'proxy', family: 6, source: { address: ipv6(header, 16), port: header.readUInt16BE(48) }, destination: { address: ipv6(header, 32), port: header.readUInt16BE(50) } },
      length,
    };
  }
  return { state: 'header', header: { version: 2, command: 'local' }, length };
}

/** Walks the TLVs after the address block: each must lie wholly inside the header; a CRC32C TLV must match. */
function checkTlvs(header: Buffer, start: number): string | null {
  let at = start;
  while (at < header.length) {
    if (header.length - at < 3) return `truncated TLV at byte ${at}`;
    const type = header[at]!;
    const valueLength = header.readUInt16BE(at + 1);
    if (at + 3 + valueLength > header.length) return `TLV 0x${type.toString(16).padStart(2, '0')} at byte ${at} runs past the header`;
    if (type === TLV_CRC32C) {
      if (valueLength !== 4) return `CRC32C TLV of ${valueLength} bytes, not 4`;
      const stated = header.readUInt32BE(at + 3);
      const zeroed = Buffer.from(header);
      zeroed.fill(0, at + 3, at + 7);
      if (crc32c(zeroed) !== stated) return 'CRC32C checksum does not match';
    }
    at += 3 + valueLength;
  }
  return null;
}

function ipv4(header: Buffer, at: number): string {
  return `${header[at]}.${header[at + 1]}.${header[at + 2]}.${header[at + 3]}`;
}

function ipv6(header: Buffer, at: number): string {
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(header.readUInt16BE(at + 2 * i).toString(16));
  return new SocketAddress({ address: groups.join(':'), family: 'ipv6' }).address;
}

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as PP2_TYPE_CRC32C specifies.
const CRC32C_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  return c >>> 0;
});

export function crc32c(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC32C_TABLE[(crc ^ byte) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// ---------------------------------------------------------------- incremental use

/**
 * Collects a stream's first bytes until they hold a complete header or cannot. It keeps at
 * most the header's bytes plus the last chunk (the parse refuses anything longer than the
 * bounds above before more is asked for); `rest` is what arrived after the header.
 */
export class ProxyHeaderReader {
  private received: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): { state: 'incomplete' } | { state: 'invalid'; reason: string } | { state: 'header'; header: ProxyHeader; rest: Buffer } {
    this.received = this.received.length === 0 ? chunk : Buffer.concat([this.received, chunk]);
    const result = parseProxyHeader(this.received);
    if (result.state !== 'header') return result;
    const rest = this.received.subarray(result.length);
    this.received = Buffer.alloc(0);
    return { state: 'header', header: result.header, rest };
  }
}
