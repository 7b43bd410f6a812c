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
} as const;

/** BullMQ queue name for CRL downloads. */
export const CRL_QUEUE = 'certgate-crl';
