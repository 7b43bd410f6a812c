// A listener's view of one configuration version: its policies by client address (sender groups
// compiled once), its authentication setup with the fallback resolved, its parsed client CAs and
// its PROXY protocol setting (trusted proxies compiled once).
// A new configuration version builds a new runtime; sessions keep the one they started with.
import type { X509Certificate } from 'node:crypto';
import type { AuthSetup } from '../../shared/policy/rules.ts';
import { compileCidrs, compileSenderGroups, inCidrs, selectPolicyName } from '../../shared/policy/sender-groups.ts';
import { DEFAULT_POLICY_LIMITS, type Config, type Listener, type MailFlowPolicy } from '../../shared/config/schemas.ts';
import { parsePemCertificates } from '../../shared/pki/pem.ts';
import { boundedMemo } from '../../shared/util/bounded-memo.ts';
import type { ProxyProtocolSetting } from './adapter.ts';

/** Everything a listener's sessions share, fixed for one configuration version. */
export interface ListenerRuntime {
  listener: Listener;
  auth: AuthSetup;
  /** The trust anchors of client certificates (OpenSSL verifies against the same PEM). */
  clientCas: X509Certificate[];
  /** §2.5: the mail flow policy of a client, chosen once when it connects. */
  policyFor(clientAddress: string): MailFlowPolicy;
  /** §2.5 proxyProtocol; null: the connection's peer is the client. */
  proxyProtocol: ProxyProtocolSetting | null;
}

/**
 * How long a trusted proxy may take to send the whole header: a balancer sends it at once,
 * with the connection (Postfix's postscreen_upstream_proxy_timeout is 5 s). 10 s, or the
 * listener's idle timeout when that is shorter.
 */
export const PROXY_HEADER_TIMEOUT_MS = 10_000;

/**
 * Fails closed: a policy name that does not resolve (the API refuses such a config, so
 * only a hand-edited Redis could hold one) rejects the client at connect.
 */
const MISSING_POLICY: MailFlowPolicy = {
  name: '(missing)', action: 'reject', tls: 'off', verifyClientCertificate: false, requireSmtpAuth: true,
  smtpAuthRequiresTls: false, maxMessageBytes: 1024, maxRecipients: 1, ...DEFAULT_POLICY_LIMITS,
};

/** Client addresses whose policy a runtime keeps (cleared when full). */
const POLICIES_KEPT = 4096;

export function buildRuntime(listener: Listener, config: Config): ListenerRuntime {
  const policies = new Map(config.mailFlowPolicies.map((p) => [p.name, p]));
  const groups = compileSenderGroups(listener.senderGroups);
  return {
    listener,
    auth: resolveAuth(listener, config),
    clientCas: listener.tls?.clientCaPem ? parsePemCertificates(listener.tls.clientCaPem) : [],
    // Kept by address: a client reconnects many times, and each BlockList check builds
    // SocketAddress objects (~15 µs a session with a few groups, perf on bench/smtp).
    policyFor: boundedMemo(POLICIES_KEPT, (address: string) => policies.get(selectPolicyName(groups, listener.defaultPolicy, address)) ?? MISSING_POLICY),
    proxyProtocol: proxyProtocolSetting(listener),
  };
}

function proxyProtocolSetting(listener: Listener): ProxyProtocolSetting | null {
  if (!listener.proxyProtocol) return null;
  const trusted = compileCidrs(listener.proxyProtocol.trustedProxies);
  return {
    trusts: (address) => inCidrs(trusted, address),
    headerTimeoutMs: Math.min(PROXY_HEADER_TIMEOUT_MS, listener.idleTimeoutSeconds * 1000),
  };
}

function resolveAuth(listener: Listener, config: Config): AuthSetup {
  const profiles = new Map(config.smtpAuthProfiles.map((p) => [p.name, p]));
  const profile = listener.smtpAuthProfile ? profiles.get(listener.smtpAuthProfile) : undefined;
  if (!profile) return { type: 'none' };
  if (profile.type === 'ldap') return { type: 'ldap', profile };
  const fallback = profile.fallbackProfile ? profiles.get(profile.fallbackProfile) : undefined;
  return { type: 'certificate', profile, fallback: fallback?.type === 'ldap' ? fallback : null };
}
