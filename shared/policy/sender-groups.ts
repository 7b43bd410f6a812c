// Sender groups (SPEC §2.5): CIDR lists matched in order by client address, the first match
// giving the mail flow policy. Matching is node:net's BlockList, built once per configuration
// version (it treats `::ffff:192.0.2.7` and `192.0.2.7` as one host, as a dual-stack socket
// needs). parseCidr is the API's check of a CIDR's text: it names typos such as host bits set,
// which BlockList would silently accept.
import { BlockList, isIP, isIPv6 } from 'node:net';

export interface Cidr {
  family: 4 | 6;
  /** Network address with the host bits cleared. */
  network: bigint;
  prefix: number;
}

const BITS = { 4: 32, 6: 128 } as const;
/** `::ffff:0:0/96`, the IPv4-mapped IPv6 range. */
const MAPPED_PREFIX = 0xffffn << 32n;

function ipv4ToBigInt(address: string): bigint {
  return address.split('.').reduce((acc, octet) => (acc << 8n) | BigInt(Number(octet)), 0n);
}

function ipv6ToBigInt(address: string): bigint {
  let text = address;
  let tail: bigint[] = [];
  // An embedded dotted quad (`::ffff:192.0.2.7`) stands for the last two 16-bit groups.
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.', lastColon)) {
    const v4 = ipv4ToBigInt(text.slice(lastColon + 1));
    tail = [v4 >> 16n, v4 & 0xffffn];
    text = `${text.slice(0, lastColon + 1)}0`; // placeholder group, replaced below
  }
  const [head, rest] = text.split('::') as [string, string | undefined];
  const parse = (part: string) => (part === '' ? [] : part.split(':').map((g) => BigInt(`0x${g}`)));
  const left = parse(head);
  const right = rest === undefined ? [] : parse(rest);
  if (tail.length > 0) (right.length > 0 ? right : left).splice(-1, 1, ...tail);
  const zeros = new Array<bigint>(8 - left.length - right.length).fill(0n);
  return [...left, ...zeros, ...right].reduce((acc, group) => (acc << 16n) | group, 0n);
}

/** Parses an IP address (zone id ignored) into its family and numeric value, or null. */
function parseAddress(address: string): { family: 4 | 6; value: bigint } | null {
  const bare = address.replace(/%.*$/, '');
  const family = isIP(bare);
  if (family === 4) return { family, value: ipv4ToBigInt(bare) };
  if (family === 6) return { family, value: ipv6ToBigInt(bare) };
  return null;
}

/**
 * Parses `a.b.c.d/n`, `x:y::z/n` or a bare address (a single host). Throws with a message
 * fit for an API error when the text is not a CIDR or has host bits set (`10.0.0.1/8` is
 * almost always a typo for `10.0.0.0/8`, as Postfix also warns).
 */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf('/');
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const address = parseAddress(addressText);
  if (!address || addressText.includes('%')) throw new Error(`"${text}" is not an IPv4 or IPv6 CIDR`);
  const bits = BITS[address.family];
  const prefixText = slash < 0 ? String(bits) : text.slice(slash + 1);
  if (!/^[0-9]{1,3}$/.test(prefixText) || Number(prefixText) > bits) {
    throw new Error(`"${text}" has an invalid prefix length (0-${bits} for IPv${address.family})`);
  }
  const prefix = Number(prefixText);
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  if ((address.value & hostMask) !== 0n) {
    const network = formatAddress(address.family, address.value & ~hostMask);
    throw new Error(`"${text}" has host bits set; did you mean ${network}/${prefix}?`);
  }
  return { family: address.family, network: address.value, prefix };
}

function formatAddress(family: 4 | 6, value: bigint): string {
  if (family === 4) return [24n, 16n, 8n, 0n].map((shift) => String((value >> shift) & 0xffn)).join('.');
  const groups = [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n].map((shift) => ((value >> shift) & 0xffffn).toString(16));
  // Compress the longest run of zero groups, as RFC 5952 recommends.
  let best = { start: -1, length: 1 };
  for (let i = 0; i < 8; i++) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > best.length) best = { start: i, length: j - i };
  }
  if (best.start < 0) return groups.join(':');
  return `${groups.slice(0, best.start).join(':')}::${groups.slice(best.start + best.length).join(':')}`;
}

export interface CompiledSenderGroup {
  name: string;
  policy: string;
  senders: BlockList;
}

/**
 * A CIDR list as one BlockList (sender groups, trusted proxies). A CIDR that does not parse
 * (never saved by the API) matches nothing: fail closed.
 */
export function compileCidrs(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const text of cidrs) {
    try {
      const { family, prefix } = parseCidr(text);
      const address = text.split('/')[0] ?? text;
      list.addSubnet(address, prefix, family === 4 ? 'ipv4' : 'ipv6');
    } catch {
      // unusable rule: matches no one
    }
  }
  return list;
}

/** Whether an address (zone id ignored) lies in a compiled CIDR list; an unparsable address never does. */
export function inCidrs(list: BlockList, address: string): boolean {
  const bare = address.replace(/%.*$/, '');
  if (isIP(bare) === 0) return false;
  return list.check(bare, isIPv6(bare) ? 'ipv6' : 'ipv4');
}

/** Sender groups as BlockLists, in order (a group whose CIDRs do not parse matches no one: the default policy applies). */
export function compileSenderGroups(groups: readonly { name: string; senders: readonly string[]; policy: string }[]): CompiledSenderGroup[] {
  return groups.map((g) => ({ name: g.name, policy: g.policy, senders: compileCidrs(g.senders) }));
}

/** The policy name for a client: the first sender group containing it, else the default. */
export function selectPolicyName(groups: readonly CompiledSenderGroup[], defaultPolicy: string, clientAddress: string): string {
  return groups.find((g) => inCidrs(g.senders, clientAddress))?.policy ?? defaultPolicy;
}

/** Per-client limits count IPv6 clients by this prefix: one host holds a whole /64 and rotates privacy addresses inside it. */
const CLIENT_IPV6_PREFIX = 64;

/**
 * The client as per-client limits count it (§2.4 maxConnectionsPerClient, authFailureThrottle
 * perClient): an IPv4 address, or an IPv4-mapped IPv6 one, as the IPv4 address; any other
 * IPv6 address as its /64 network (`2001:db8:1:2::/64`). Anything unparsable as itself.
 */
export function clientKey(address: string): string {
  const parsed = parseAddress(address);
  if (!parsed) return address;
  if (parsed.family === 4) return formatAddress(4, parsed.value);
  if (parsed.value >> 32n === MAPPED_PREFIX >> 32n) return formatAddress(4, parsed.value & 0xffffffffn);
  const hostBits = BigInt(BITS[6] - CLIENT_IPV6_PREFIX);
  return `${formatAddress(6, (parsed.value >> hostBits) << hostBits)}/${CLIENT_IPV6_PREFIX}`;
}
