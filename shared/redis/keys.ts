// Every Redis key and channel certgate uses, in one place, so the API, the scheduler and
// the workers can never disagree on where a piece of state lives.
const P = 'certgate:';

export const keys = {
  /** The whole configuration as one JSON document (secrets included): one key, so every write is atomic. */
  config: `${P}config`,
  /** Published after every configuration write; the message is the new version number. */
  configChannel: `${P}config:changed`,
  /** API tokens: hash of sha256(token) -> JSON { name, role, createdAt }. */
  tokens: `${P}tokens`,
  /** Configuration change log (stream). */
  audit: `${P}audit`,
  /** Authentication and session events (capped stream). */
  events: `${P}events`,
  /** Worker heartbeats: hash of worker id -> JSON WorkerStatus. */
  workers: `${P}workers`,
  /** The CRL in force for a source: raw DER bytes. */
  crlData: (source: string) => `${P}crl:${source}:der`,
  /** Status of a CRL source (JSON CrlStatus). */
  crlStatus: (source: string) => `${P}crl:${source}:status`,
  /** Published when a CRL in force changes; the message is the source name. */
  crlChannel: `${P}crl:changed`,
  /** Lock held while a source downloads, so two schedulers never fetch it at once. */
  crlLock: (source: string) => `${P}crl:${source}:lock`,
  /**
   * Prefix of the failed-AUTH counters of §2.4 authFailureThrottle (`<prefix>:<scope>:<window>:<key>:<bucket>`,
   * integers with an expiry). Written and read by the workers only (worker/auth-throttle.ts).
   */
  authFailures: `${P}authfail`,
  /**
   * A verified OCSP answer about one certificate (JSON CachedOcspAnswer, shared/pki/ocsp/checker.ts),
   * named by the hex SHA-1 of its issuer's public key and its serial, expiring with the answer (PX).
   * Writer: the OcspChecker of whichever process asked the responder (a worker, or the API in
   * mutual-TLS mode). Readers: every OcspChecker, before asking a responder.
   */
  ocspAnswer: (issuerKeyHash: string, serial: string) => `${P}ocsp:${issuerKeyHash}:${serial}`,
  /**
   * Held (SET NX, PX a little over timeoutMs) by the process asking the responder about that
   * certificate, so that the others wait for its answer instead of asking too. Writer and readers:
   * the OcspCheckers; the holder deletes it once the answer is stored.
   */
  ocspLock: (issuerKeyHash: string, serial: string) => `${P}ocsp:${issuerKeyHash}:${serial}:lock`,
} as const;

/** BullMQ queue name for CRL downloads. */
export const CRL_QUEUE = 'certgate-crl';
