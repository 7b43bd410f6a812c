/**
 * The API with mutual TLS (SPEC §2.6 `webInterface`): HTTPS options from the
 * environment, and an `onRequest` hook that refuses client certificates the
 * CRLs revoke.
 *
 * The TLS layer (`requestCert` + `rejectUnauthorized` against API_CLIENT_CA)
 * already refuses clients without a valid certificate; the hook adds the
 * revocation check, which follows CRL changes without new TLS contexts (Node's
 * own `crl` option would need a context rebuild per CRL and scales badly,
 * see FIELD-NOTES).
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { CrlStore } from '../shared/pki/crl/store.ts';
import type { CrlSettings } from '../shared/config/schemas.ts';
import { keyMatchesCertificate, parsePemCertificates, parsePrivateKeyPem } from '../shared/pki/certificate.ts';

export interface ApiHttpsOptions {
  key: string;
  cert: string;
  ca: string;
  requestCert: true;
  rejectUnauthorized: true;
  minVersion: 'TLSv1.2';
}

const TLS_ENV = ['API_TLS_CERT', 'API_TLS_KEY', 'API_CLIENT_CA'] as const;

/**
 * HTTPS options for Fastify from API_TLS_CERT, API_TLS_KEY and API_CLIENT_CA
 * (PEM file paths): all three, or none (null: plain HTTP). Throws a one-line
 * reason when they are incomplete, unreadable or do not fit together.
 */
export function httpsOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): ApiHttpsOptions | null {
  const given = TLS_ENV.filter((n) => env[n]);
  if (given.length === 0) return null;
  if (given.length < TLS_ENV.length) {
    const missing = TLS_ENV.filter((n) => !env[n]);
    throw new Error(`mutual TLS needs ${TLS_ENV.join(', ')} together; ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not set`);
  }
  const [cert, key, ca] = TLS_ENV.map((name) => readPem(name, env[name] as string));
  check('API_TLS_CERT', () => parsePemCertificates(cert));
  check('API_TLS_KEY', () => parsePrivateKeyPem(key));
  check('API_CLIENT_CA', () => parsePemCertificates(ca));
  if (!keyMatchesCertificate(key, cert)) throw new Error('API_TLS_KEY is not the private key of the API_TLS_CERT certificate');
  return { key, cert, ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' };
}

function readPem(name: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`${name} "${path}" cannot be read: ${(err as Error).message}`, { cause: err });
  }
}

function check(name: string, parse: () => unknown): void {
  try {
    parse();
  } catch (err) {
    throw new Error(`${name}: ${(err as Error).message}`, { cause: err });
  }
}

/** Longest chain followed; real ones have 2-4 certificates. */
const MAX_CHAIN = 10;
const chains = new WeakMap<TLSSocket, X509Certificate[]>();

/**
 * The peer's chain, leaf first, as the TLS layer verified it (ending with the
 * API_CLIENT_CA anchor when it found one). `getPeerCertificate(true)` must come
 * first: calling `getPeerX509Certificate()` before it leaves the
 * `issuerCertificate` links empty on Node 20. Cached per connection (the
 * peer's certificate cannot change on it).
 */
export function peerChain(socket: TLSSocket): X509Certificate[] {
  const cached = chains.get(socket);
  if (cached) return cached;
  const chain: X509Certificate[] = [];
  const seen = new Set<string>();
  let c: DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  while (c && c.raw && chain.length < MAX_CHAIN && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    chain.push(new X509Certificate(c.raw));
    c = c.issuerCertificate; // a self-signed root links to itself: `seen` stops there
  }
  chains.set(socket, chain);
  return chain;
}

function forbidden(reply: FastifyReply, message: string): FastifyReply {
  return reply.code(403).send({ statusCode: 403, error: 'Forbidden', message });
}

/**
 * A Fastify `onRequest` hook: with `webInterface` on and a TLS connection,
 * a revoked client certificate gets 403 `client certificate revoked`, and one
 * whose issuer's only CRL has expired gets 403 under `onExpiredCrl: reject`
 * (`accept-and-log` lets it through with a warning). Certificates of issuers
 * without a CRL pass (the TLS layer validated them). Plain-HTTP requests are
 * not affected: there is no client certificate to check.
 */
export function revocationHook(store: Pick<CrlStore, 'check'>, getSettings: () => Promise<CrlSettings> | CrlSettings) {
  return async function checkClientCertificate(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> {
    const socket = request.raw.socket as TLSSocket;
    if (!socket.encrypted) return undefined;
    const settings = await getSettings();
    if (!settings.webInterface) return undefined;
    const chain = peerChain(socket);
    // Unreachable with rejectUnauthorized, but a check that cannot run must not pass.
    if (chain.length === 0) return forbidden(reply, 'client certificate required');
    const verdict = store.check(chain, new Date(), settings);
    switch (verdict.status) {
      case 'revoked':
        request.log.warn({ detail: verdict.detail }, 'client certificate revoked');
        return forbidden(reply, 'client certificate revoked');
      case 'crl-expired':
        request.log.warn({ detail: verdict.detail }, 'client certificate refused: its CRL has expired');
        return forbidden(reply, 'client certificate cannot be checked: the CRL has expired');
      case 'crl-expired-accepted':
        request.log.warn({ detail: verdict.detail }, 'client certificate accepted although its CRL has expired');
        return undefined;
      default:
        return undefined;
    }
  };
}
