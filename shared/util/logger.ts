// The logging interface library-like modules need, so that they accept pino, Fastify's logger or a
// test's collector without depending on any of them.
export interface MinimalLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}
