// Unit and fuzz tests of worker/smtp/proxy-protocol.ts, the PROXY protocol header parser.
//
// The examples come from HAProxy's proxy-protocol.txt. The fuzz part compares the parser
// with a reference decoder written here from the same text (whole headers only, no
// incremental logic), over random bytes, generated valid headers and their mutations and
// truncations, from a fixed seed so that a failure can be replayed.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { SocketAddress } from 'node:net';
import {
  crc32c, parseProxyHeader, proxiedClient, ProxyHeaderReader, V1_MAX_BYTES, V2_MAX_BYTES, type ProxyHeader, type ProxyParse,
} from '../worker/smtp/proxy-protocol.ts';
import { PROXY_V2_SIGNATURE } from './helpers/proxy-header.ts';
import { seededRandom } from './helpers/random.ts';

const ascii = (text: string) => Buffer.from(text, 'ascii');

/** A v2 header: version/command byte, family/transport byte, then the block (addresses and TLVs). */
function v2(versionCommand: number, familyTransport: number, block: Buffer, declaredLength = block.length): Buffer {
  const fixed = Buffer.alloc(4);
  fixed[0] = versionCommand;
  fixed[1] = familyTransport;
  fixed.writeUInt16BE(declaredLength, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, fixed, block]);
}

function tlv(type: number, value: Buffer): Buffer {
  const head = Buffer.alloc(3);
  head[0] = type;
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

function inet4(source: string, destination: string, sourcePort: number, destinationPort: number): Buffer {
  const b = Buffer.alloc(12);
  source.split('.').forEach((o, i) => (b[i] = Number(o)));
  destination.split('.').forEach((o, i) => (b[4 + i] = Number(o)));
  b.writeUInt16BE(sourcePort, 8);
  b.writeUInt16BE(destinationPort, 10);
  return b;
}

function inet6(source: Buffer, destination: Buffer, sourcePort: number, destinationPort: number): Buffer {
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(sourcePort, 0);
  ports.writeUInt16BE(destinationPort, 2);
  return Buffer.concat([source, destination, ports]);
}

/** Adds a CRC32C TLV and fills it in the way a sender does (checksum over the header with the field zeroed). */
function withCrc(versionCommand: number, familyTransport: number, block: Buffer): Buffer {
  const header = v2(versionCommand, familyTransport, Buffer.concat([block, tlv(0x03, Buffer.alloc(4))]));
  header.writeUInt32BE(crc32c(header), header.length - 4);
  return header;
}

function expectHeader(result: ProxyParse, header: ProxyHeader, length: number, what: string): void {
  assert.deepEqual(result, { state: 'header', header, length }, what);
}

function expectInvalid(result: ProxyParse, reason: RegExp, what: string): void {
  assert.equal(result.state, 'invalid', `${what}: ${JSON.stringify(result)}`);
  assert.match((result as { reason: string }).reason, reason, what);
}

describe('version 1', () => {
  test('TCP4, TCP6 and UNKNOWN, as in proxy-protocol.txt', () => {
    const tcp4 = 'PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n';
    expectHeader(parseProxyHeader(ascii(tcp4)), {
      version: 1, command: 'proxy', family: 4,
      source: { address: '255.255.255.255', port: 65535 }, destination: { address: '255.255.255.255', port: 65535 },
    }, tcp4.length, 'the longest TCP4 line');
    const f = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const tcp6 = `PROXY TCP6 ${f} ${f} 65535 65535\r\n`;
    assert.equal(tcp6.length, 104);
    expectHeader(parseProxyHeader(ascii(tcp6)), {
      version: 1, command: 'proxy', family: 6, source: { address: f, port: 65535 }, destination: { address: f, port: 65535 },
    }, 104, 'the longest TCP6 line');
    expectHeader(parseProxyHeader(ascii('PROXY TCP4 192.0.2.7 198.51.100.1 0 25\r\n')), {
      version: 1, command: 'proxy', family: 4, source: { address: '192.0.2.7', port: 0 }, destination: { address: '198.51.100.1', port: 25 },
    }, 40, 'port 0 is in range');
    expectHeader(parseProxyHeader(ascii('PROXY UNKNOWN\r\n')), { version: 1, command: 'local' }, 15, 'UNKNOWN');
    const longest = `PROXY UNKNOWN ${'x'.repeat(V1_MAX_BYTES - 16)}\r\n`;
    assert.equal(longest.length, V1_MAX_BYTES);
    expectHeader(parseProxyHeader(ascii(longest)), { version: 1, command: 'local' }, V1_MAX_BYTES, 'UNKNOWN ignores the rest of a 107-byte line');
  });

  test('IPv6 addresses come out in one canonical form (so per-client counts and sender groups see one address)', () => {
    const result = parseProxyHeader(ascii('PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::FFFF:7F00:2 40000 587\r\n'));
    assert.equal(result.state, 'header');
    const header = (result as { header: ProxyHeader }).header;
    assert.equal(header.command === 'proxy' && header.source.address, '2001:db8::1');
    assert.equal(header.command === 'proxy' && header.destination.address, '::ffff:127.0.0.2');
  });

  test('the bytes after the CRLF are not the header\'s', () => {
    const line = 'PROXY TCP4 127.0.0.2 127.0.0.1 40000 2525\r\n';
    const result = parseProxyHeader(ascii(`${line}EHLO client\r\n`));
    assert.equal(result.state === 'header' && result.length, line.length);
    const reader = new ProxyHeaderReader();
    const out = reader.push(ascii(`${line}\x16\x03\x01`));
    assert.equal(out.state, 'header');
    assert.deepEqual(out.state === 'header' && [...out.rest], [0x16, 0x03, 0x01], 'a TLS ClientHello right behind the header is handed on intact');
  });

  test('every malformed line is refused with its reason', () => {
    const cases: [string, RegExp][] = [
      ['EHLO x\r\n', /not a PROXY protocol header/],
      ['proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n', /not a PROXY protocol header/],
      ['PROXY\r\n', /not a PROXY protocol header/],
      ['PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n', /protocol "TCP5"/],
      ['PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n', /protocol "tcp4"/],
      ['PROXY UNKNOWNX\r\n', /protocol "UNKNOWNX"/],
      ['PROXY \r\n', /protocol ""/],
      ['PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n', /needs source and destination/],
      ['PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n', /needs source and destination/],
      ['PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n', /needs source and destination/],
      ['PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n', /needs source and destination/],
      ['PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n', /source address "1.2.3" is not an IPv4/],
      ['PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n', /source address/],
      ['PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n', /source address/],
      ['PROXY TCP4 ::1 1.2.3.4 1 2\r\n', /source address "::1" is not an IPv4/],
      ['PROXY TCP4 1.2.3.4 1.2.3.x 1 2\r\n', /destination address/],
      ['PROXY TCP6 1.2.3.4 ::1 1 2\r\n', /source address "1.2.3.4" is not an IPv6/],
      ['PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n', /source address/],
      ['PROXY TCP6 ::1 :::1 1 2\r\n', /destination address/],
      ['PROXY TCP6 ::g ::1 1 2\r\n', /source address/],
      ['PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n', /source port "65536"/],
      ['PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n', /source port "01"/],
      ['PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n', /source port "-1"/],
      ['PROXY TCP4 1.2.3.4 1.2.3.4 1 +2\r\n', /destination port "\+2"/],
      ['PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n', /line feed without carriage return/],
      ['PROXY TCP4 1.2.3.4\r1.2.3.4 1 2\r\n', /carriage return not followed by line feed/],
      ['PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n', /control or non-ASCII byte 0x09/],
      ['PROXY UNKNOWN \u00e9\r\n', /non-ASCII/],
      [`PROXY UNKNOWN ${'x'.repeat(V1_MAX_BYTES - 15)}\r\n`, /no CRLF within 107 bytes/],
    ];
    for (const [line, reason] of cases) expectInvalid(parseProxyHeader(Buffer.from(line, 'latin1')), reason, JSON.stringify(line));
  });

  test('refused at the first byte that cannot belong to a header, not at the end of a line', () => {
    expectInvalid(parseProxyHeader(Buffer.from([0x16])), /not a PROXY/, 'a TLS ClientHello');
    expectInvalid(parseProxyHeader(ascii('E')), /not a PROXY/, 'an SMTP command');
    expectInvalid(parseProxyHeader(ascii('PROXI')), /not a PROXY/, 'a wrong fifth letter');
    expectInvalid(parseProxyHeader(ascii('PROXY TCP4 1.2.3.4\x00')), /control/, 'a NUL mid-line');
    expectInvalid(parseProxyHeader(ascii(`PROXY ${'1'.repeat(V1_MAX_BYTES)}`)), /no CRLF within 107/, 'a long line without its end');
  });
});

describe('version 2', () => {
  const clientV6 = Buffer.from('20010db8000000000000000000000007', 'hex');
  const serverV6 = Buffer.from('20010db8000000000000000000000001', 'hex');

  test('PROXY over TCP/IPv4 and TCP/IPv6, with TLVs skipped', () => {
    const h4 = v2(0x21, 0x11, inet4('192.0.2.7', '198.51.100.1', 40000, 587));
    expectHeader(parseProxyHeader(h4), {
      version: 2, command: 'proxy', family: 4, source: { address: '192.0.2.7', port: 40000 }, destination: { address: '198.51.100.1', port: 587 },
    }, 28, 'TCP4');
    const h6 = v2(0x21, 0x21, Buffer.concat([inet6(clientV6, serverV6, 1, 65535), tlv(0x01, ascii('smtp')), tlv(0x02, ascii('mx.example')), tlv(0xe0, Buffer.alloc(0)), tlv(0x04, Buffer.alloc(40))]));
    expectHeader(parseProxyHeader(h6), {
      version: 2, command: 'proxy', family: 6, source: { address: '2001:db8::7', port: 1 }, destination: { address: '2001:db8::1', port: 65535 },
    }, h6.length, 'TCP6 with ALPN, authority, an empty custom TLV and NOOP padding');
    const mapped = Buffer.concat([Buffer.alloc(10), Buffer.from([0xff, 0xff, 127, 0, 0, 3])]);
    const hm = parseProxyHeader(v2(0x21, 0x21, inet6(mapped, serverV6, 2, 3)));
    assert.equal(hm.state === 'header' && hm.header.command === 'proxy' && hm.header.source.address, '::ffff:127.0.0.3', 'an IPv4-mapped client');
  });

  test('LOCAL (a health check), and PROXY over UNSPEC or UNIX: the real connection endpoints', () => {
    expectHeader(parseProxyHeader(v2(0x20, 0x00, Buffer.alloc(0))), { version: 2, command: 'local' }, 16, 'LOCAL as HAProxy sends it');
    expectHeader(parseProxyHeader(v2(0x20, 0x11, inet4('1.2.3.4', '5.6.7.8', 1, 2))), { version: 2, command: 'local' }, 28, 'LOCAL ignores any address block');
    expectHeader(parseProxyHeader(v2(0x20, 0x77, Buffer.alloc(5))), { version: 2, command: 'local' }, 21, 'LOCAL ignores the family byte');
    expectHeader(parseProxyHeader(v2(0x21, 0x00, tlv(0x05, ascii('id')))), { version: 2, command: 'local' }, 21, 'PROXY over UNSPEC');
    expectHeader(parseProxyHeader(v2(0x21, 0x31, Buffer.alloc(216))), { version: 2, command: 'local' }, 232, 'PROXY over a UNIX stream');
  });

  test('the bytes after the declared length are not the header\'s', () => {
    const header = v2(0x21, 0x11, inet4('127.0.0.2', '127.0.0.1', 1, 2));
    const reader = new ProxyHeaderReader();
    assert.equal(reader.push(header.subarray(0, 5)).state, 'incomplete');
    const out = reader.push(Buffer.concat([header.subarray(5), ascii('EHLO x\r\n')]));
    assert.equal(out.state === 'header' && out.rest.toString(), 'EHLO x\r\n');
  });

  test('a CRC32C TLV is checked', () => {
    assert.equal(crc32c(ascii('123456789')), 0xe3069283, 'the CRC-32C check value (RFC 3720 B.4)');
    const good = withCrc(0x21, 0x11, inet4('192.0.2.7', '198.51.100.1', 1, 2));
    assert.equal(parseProxyHeader(good).state, 'header', 'a matching checksum');
    const bad = Buffer.from(good);
    bad[16] ^= 1;
    expectInvalid(parseProxyHeader(bad), /CRC32C checksum does not match/, 'a client address changed after the checksum');
    expectInvalid(parseProxyHeader(v2(0x21, 0x11, Buffer.concat([inet4('1.2.3.4', '1.2.3.4', 1, 2), tlv(0x03, Buffer.alloc(2))]))), /CRC32C TLV of 2 bytes/, 'a short CRC TLV');
  });

  test('every malformed header is refused with its reason', () => {
    const a4 = inet4('1.2.3.4', '5.6.7.8', 1, 2);
    const cases: [Buffer, RegExp, string][] = [
      [v2(0x11, 0x11, a4), /version 1 is not 2/, 'version nibble 1'],
      [v2(0x31, 0x11, a4), /version 3 is not 2/, 'version nibble 3'],
      [v2(0x22, 0x11, a4), /command 2 is neither/, 'command 2'],
      [v2(0x2f, 0x11, a4), /command 15/, 'command 15'],
      [v2(0x21, 0x12, a4), /0x12 is not TCP/, 'UDP over IPv4'],
      [v2(0x21, 0x22, Buffer.alloc(36)), /0x22 is not TCP/, 'UDP over IPv6'],
      [v2(0x21, 0x32, Buffer.alloc(216)), /0x32/, 'UNIX datagram'],
      [v2(0x21, 0x10, a4), /0x10/, 'IPv4 with an unspecified transport'],
      [v2(0x21, 0x41, a4), /0x41/, 'family 4'],
      [v2(0x21, 0x11, a4.subarray(0, 11)), /length 11 is shorter than the 12 address bytes/, 'IPv4 block one byte short'],
      [v2(0x21, 0x21, Buffer.alloc(35)), /length 35 is shorter than the 36/, 'IPv6 block one byte short'],
      [v2(0x21, 0x11, Buffer.concat([a4, Buffer.from([0x01])])), /truncated TLV at byte 28/, 'one stray byte after the addresses'],
      [v2(0x21, 0x11, Buffer.concat([a4, Buffer.from([0x01, 0x00])])), /truncated TLV/, 'two stray bytes'],
      [v2(0x21, 0x11, Buffer.concat([a4, Buffer.from([0x01, 0x00, 0x05, 0x61])])), /TLV 0x01 at byte 28 runs past the header/, 'a TLV longer than the header'],
      [v2(0x21, 0x11, Buffer.concat([a4, tlv(0x02, ascii('ok')), Buffer.from([0x20, 0xff, 0xff])])), /TLV 0x20 at byte 33 runs past/, 'a later TLV declaring 65535 bytes'],
    ];
    for (const [bytes, reason, what] of cases) expectInvalid(parseProxyHeader(bytes), reason, what);
  });

  test(`bounded: a declared length over ${V2_MAX_BYTES} bytes is refused as soon as the 16 fixed bytes are in`, () => {
    const limit = V2_MAX_BYTES - 16;
    const atLimit = v2(0x21, 0x11, Buffer.concat([inet4('1.2.3.4', '5.6.7.8', 1, 2), tlv(0x04, Buffer.alloc(limit - 12 - 3))]));
    assert.equal(atLimit.length, V2_MAX_BYTES);
    assert.equal(parseProxyHeader(atLimit).state, 'header', 'exactly at the limit');
    const over = v2(0x21, 0x11, Buffer.alloc(0), limit + 1);
    expectInvalid(parseProxyHeader(over), /header of 4097 bytes is over certgate's limit of 4096/, 'one byte over, before its block arrived');
    expectInvalid(parseProxyHeader(v2(0x21, 0x11, Buffer.alloc(0), 65535)), /65551 bytes/, 'the largest declarable length');
  });

  test('refused as soon as the signature, version or command goes wrong', () => {
    expectInvalid(parseProxyHeader(Buffer.from([0x0d, 0x0a, 0x0d, 0x0b])), /not a PROXY/, 'a wrong signature byte');
    expectInvalid(parseProxyHeader(Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x10])])), /version 1/, 'a wrong version at byte 13');
    assert.equal(parseProxyHeader(Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x21])])).state, 'incomplete', 'a right version at byte 13');
  });
});

test('proxiedClient: the header\'s source, or for LOCAL/UNKNOWN the connection\'s own peer', () => {
  const peer = { address: '10.0.0.5', port: 50000 };
  const proxied = parseProxyHeader(ascii('PROXY TCP4 192.0.2.7 198.51.100.1 40000 587\r\n'));
  assert.deepEqual(proxied.state === 'header' && proxiedClient(proxied.header, peer), { address: '192.0.2.7', port: 40000 });
  for (const local of [ascii('PROXY UNKNOWN\r\n'), v2(0x20, 0x00, Buffer.alloc(0)), v2(0x21, 0x31, Buffer.alloc(216))]) {
    const r = parseProxyHeader(local);
    assert.deepEqual(r.state === 'header' && proxiedClient(r.header, peer), peer, local.toString('hex'));
  }
});

describe('incremental', () => {
  const valid: [string, Buffer][] = [
    ['v1 TCP4', ascii('PROXY TCP4 127.0.0.2 127.0.0.1 40000 2525\r\n')],
    ['v1 TCP6', ascii('PROXY TCP6 ::1 ::1 40000 2525\r\n')],
    ['v1 UNKNOWN', ascii('PROXY UNKNOWN whatever\r\n')],
    ['v2 TCP4', v2(0x21, 0x11, inet4('127.0.0.3', '127.0.0.1', 1, 2))],
    ['v2 TCP6 + CRC', withCrc(0x21, 0x21, inet6(Buffer.alloc(16, 1), Buffer.alloc(16, 2), 3, 4))],
    ['v2 LOCAL', v2(0x20, 0x00, Buffer.alloc(0))],
  ];

  test('every proper prefix of a valid header is incomplete; byte by byte gives the same header as all at once', () => {
    for (const [what, header] of valid) {
      for (let n = 0; n < header.length; n++) assert.equal(parseProxyHeader(header.subarray(0, n)).state, 'incomplete', `${what}: first ${n} bytes`);
      const whole = parseProxyHeader(header);
      const reader = new ProxyHeaderReader();
      let last: ReturnType<ProxyHeaderReader['push']> = { state: 'incomplete' };
      for (const byte of header) last = reader.push(Buffer.from([byte]));
      assert.equal(whole.state, 'header', what);
      assert.deepEqual(last, { state: 'header', header: (whole as { header: ProxyHeader }).header, rest: Buffer.alloc(0) }, what);
    }
  });
});

// ---------------------------------------------------------------- fuzz against a reference decoder

/**
 * The reference: decodes a buffer that must be exactly one complete header, from the
 * protocol text, written independently of the parser. null: not a valid header.
 */
function reference(bytes: Buffer): ProxyHeader | null {
  if (bytes.subarray(0, 12).equals(PROXY_V2_SIGNATURE)) {
    if (bytes.length < 16 || bytes.length > V2_MAX_BYTES || bytes.readUInt16BE(14) !== bytes.length - 16) return null;
    const [vc, ft] = [bytes[12]!, bytes[13]!];
    if (vc === 0x20) return { version: 2, command: 'local' };
    if (vc !== 0x21) return null;
    const sizes: Record<number, number> = { 0x00: 0, 0x11: 12, 0x21: 36, 0x31: 216 };
    const size = sizes[ft];
    if (size === undefined || bytes.length < 16 + size) return null;
    for (let at = 16 + size; at < bytes.length;) {
      if (at + 3 > bytes.length) return null;
      const len = bytes.readUInt16BE(at + 1);
      if (at + 3 + len > bytes.length) return null;
      if (bytes[at] === 0x03) {
        if (len !== 4) return null;
        const copy = Buffer.from(bytes);
        copy.writeUInt32BE(0, at + 3);
        if (crc32c(copy) !== bytes.readUInt32BE(at + 3)) return null;
      }
      at += 3 + len;
    }
    if (ft === 0x11) {
      const ip = (o: number) => [...bytes.subarray(o, o + 4)].join('.');
      return { version: 2, command: 'proxy', family: 4, source: { address: ip(16), port: bytes.readUInt16BE(24) }, destination: { address: ip(20), port: bytes.readUInt16BE(26) } };
    }
    if (ft === 0x21) {
      const ip = (o: number) => new SocketAddress({ address: bytes.subarray(o, o + 16).toString('hex').replace(/(.{4})(?!$)/g, '$1:'), family: 'ipv6' }).address;
      return { version: 2, command: 'proxy', family: 6, source: { address: ip(16), port: bytes.readUInt16BE(48) }, destination: { address: ip(32), port: bytes.readUInt16BE(50) } };
    }
    return { version: 2, command: 'local' };
  }
  const text = bytes.toString('latin1');
  if (bytes.length > V1_MAX_BYTES || !/^PROXY [\x20-\x7e]*\r\n$/.test(text)) return null;
  if (/^PROXY UNKNOWN( [\x20-\x7e]*)?\r\n$/.test(text)) return { version: 1, command: 'local' };
  const octet = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]\\d|\\d)';
  const port = '(0|[1-9]\\d{0,4})';
  const m4 = new RegExp(`^PROXY TCP4 (${octet}(?:\\.${octet}){3}) (${octet}(?:\\.${octet}){3}) ${port} ${port}\\r\\n$`).exec(text);
  const m6 = /^PROXY TCP6 ([0-9a-fA-F:.]+) ([0-9a-fA-F:.]+) (0|[1-9]\d{0,4}) (0|[1-9]\d{0,4})\r\n$/.exec(text);
  if (m4) {
    const [sp, dp] = [Number(m4[3]), Number(m4[4])];
    if (sp > 65535 || dp > 65535) return null;
    return { version: 1, command: 'proxy', family: 4, source: { address: m4[1]!, port: sp }, destination: { address: m4[2]!, port: dp } };
  }
  if (m6) {
    const canon = (a: string) => { try { return new SocketAddress({ address: a, family: 'ipv6' }).address; } catch { return null; } };
    const [s, d, sp, dp] = [canon(m6[1]!), canon(m6[2]!), Number(m6[3]), Number(m6[4])];
    if (s === null || d === null || sp > 65535 || dp > 65535) return null;
    return { version: 1, command: 'proxy', family: 6, source: { address: s, port: sp }, destination: { address: d, port: dp } };
  }
  return null;
}

/** A random valid header of any kind. */
function generate(next: () => number): Buffer {
  const int = (n: number) => Math.floor(next() * n);
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  const ip4 = () => Array.from({ length: 4 }, () => int(256)).join('.');
  const ip6 = () => new SocketAddress({ address: bytes(16).toString('hex').replace(/(.{4})(?!$)/g, '$1:'), family: 'ipv6' }).address;
  const tlvs = () => Buffer.concat(Array.from({ length: int(4) }, () => tlv(int(256) === 3 ? 4 : int(256) || 0xe0, bytes(int(40)))).filter((t) => t[0] !== 0x03));
  switch (int(7)) {
    case 0: return ascii(`PROXY TCP4 ${ip4()} ${ip4()} ${int(65536)} ${int(65536)}\r\n`);
    case 1: return ascii(`PROXY TCP6 ${ip6()} ${ip6()} ${int(65536)} ${int(65536)}\r\n`);
    case 2: return ascii(`PROXY UNKNOWN${int(2) ? '' : ` ${'a'.repeat(int(90))}`}\r\n`);
    case 3: return v2(0x21, 0x11, Buffer.concat([bytes(12), tlvs()]));
    case 4: return int(2) ? v2(0x21, 0x21, Buffer.concat([bytes(36), tlvs()])) : withCrc(0x21, 0x21, Buffer.concat([bytes(36), tlvs()]));
    case 5: return v2(0x20, int(256), bytes(int(64)));
    default: return int(2) ? v2(0x21, 0x00, tlvs()) : v2(0x21, 0x31, Buffer.concat([bytes(216), tlvs()]));
  }
}

function mutate(header: Buffer, next: () => number): Buffer {
  const int = (n: number) => Math.floor(next() * n);
  const b = Buffer.from(header);
  switch (int(5)) {
    case 0: { b[int(b.length)] ^= 1 << int(8); return b; }
    case 1: { b[int(b.length)] = int(256); return b; }
    case 2: { const at = int(b.length + 1); return Buffer.concat([b.subarray(0, at), Buffer.from([int(256)]), b.subarray(at)]); }
    case 3: { const at = int(b.length); return Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]); }
    default: { if (b.length >= 16 && b[0] === 0x0d) b.writeUInt16BE(int(65536), 14); else b[int(b.length)] = [0x20, 0x0d, 0x0a, 0x3a, 0x2e][int(5)]!; return b; }
  }
}

/** Feeds `input` in random pieces; the verdict is the first that is not incomplete. */
function feedInPieces(input: Buffer, next: () => number): ReturnType<ProxyHeaderReader['push']> {
  const reader = new ProxyHeaderReader();
  let at = 0;
  let last: ReturnType<ProxyHeaderReader['push']> = { state: 'incomplete' };
  while (at < input.length && last.state === 'incomplete') {
    const size = 1 + Math.floor(next() * Math.min(64, input.length - at));
    last = reader.push(input.subarray(at, at + size));
    at += size;
  }
  return last.state === 'header' ? { ...last, rest: Buffer.concat([last.rest, input.subarray(at)]) } : last;
}

/** Checks one input: never throws, agrees with the reference, same verdict in pieces as whole. */
function check(input: Buffer, next: () => number, what: string): ProxyParse['state'] {
  const whole = parseProxyHeader(input);
  assert.ok(['incomplete', 'header', 'invalid'].includes(whole.state), what);
  if (whole.state === 'header') {
    assert.ok(whole.length <= input.length && whole.length <= V2_MAX_BYTES, `${what}: length within input and bounds`);
    assert.deepEqual(whole.header, reference(input.subarray(0, whole.length)), `${what}: an address only from a header the reference accepts`);
  } else {
    // No prefix of the input is a complete header the reference accepts (else the parser missed it).
    for (let n = 1; n <= Math.min(input.length, V2_MAX_BYTES); n++) {
      if (reference(input.subarray(0, n)) !== null) assert.fail(`${what}: the reference accepts the first ${n} bytes, the parser said ${whole.state}`);
    }
  }
  const pieces = feedInPieces(input, next);
  if (whole.state === 'header') {
    assert.equal(pieces.state, 'header', what);
    assert.deepEqual(pieces.state === 'header' && [pieces.header, pieces.rest], [whole.header, input.subarray(whole.length)], `${what}: in pieces`);
  } else {
    assert.equal(pieces.state, whole.state, `${what}: in pieces`);
  }
  return whole.state;
}

describe('fuzz (seeded, bounded)', () => {
  const SEED = 0x9c0ffee;
  const ROUNDS = 4000;

  test(`${ROUNDS} generated headers parse exactly as the reference decodes them, whole, in pieces and followed by data`, () => {
    const next = seededRandom(SEED);
    for (let i = 0; i < ROUNDS; i++) {
      const header = generate(next);
      const expected = reference(header);
      assert.notEqual(expected, null, `round ${i}: the generator made a valid header ${header.toString('hex')}`);
      const input = Buffer.concat([header, ascii('EHLO client\r\n')]);
      assert.equal(check(input, next, `round ${i} ${header.toString('hex')}`), 'header');
      const cut = Math.floor(next() * header.length);
      assert.equal(parseProxyHeader(header.subarray(0, cut)).state, 'incomplete', `round ${i}: truncated to ${cut} bytes`);
    }
  });

  test(`${ROUNDS} mutated headers and ${ROUNDS} random inputs: never a throw, never an address the reference refuses`, () => {
    const next = seededRandom(SEED + 1);
    const seen = { incomplete: 0, header: 0, invalid: 0 };
    for (let i = 0; i < ROUNDS; i++) {
      let input = generate(next);
      for (let m = 1 + Math.floor(next() * 3); m > 0; m--) input = mutate(input, next);
      if (next() < 0.3) input = input.subarray(0, Math.floor(next() * input.length));
      seen[check(input, next, `mutation ${i} ${input.toString('hex')}`)]++;
      const noise = Buffer.from(Array.from({ length: Math.floor(next() * 200) }, () => Math.floor(next() * 256)));
      // Random bytes behind a right beginning reach the deeper checks.
      const start = [Buffer.alloc(0), ascii('PROXY '), PROXY_V2_SIGNATURE, Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x21, 0x11])])][Math.floor(next() * 4)]!;
      seen[check(Buffer.concat([start, noise]), next, `noise ${i}`)]++;
    }
    // The mutations must exercise every verdict, or the fuzz tells nothing.
    for (const [state, count] of Object.entries(seen)) assert.ok(count > 50, `${state}: ${count} cases`);
  });
});
