// An experiment switch of bench/smtp.ts: smtp-server waits a fixed 100 ms before every
// greeting (early-talker detection). `removeGreetingDelay` patches that wait away in the
// process that calls it (the sink in the bench process); `greetingDelayPreload` is the same
// patch as a plain-JS module for `node --import` in a child process (certgate's worker, the
// references), without touching their code. Both change nothing else: connection setup
// (listeners, reverse lookup hooks, onConnect) runs as before, only without the timer.
import { fileURLToPath } from 'node:url';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

const SMTP_CONNECTION_URL = new URL('../../node_modules/smtp-server/dist/esm/smtp-connection.js', import.meta.url);

export function removeGreetingDelay(): void {
  SMTPConnection.prototype.init = function init(this: SMTPConnection): void {
    this._setListeners(() => this.connectionReady());
  };
}

/** Source of a preload module doing what removeGreetingDelay does, in the smtp-server instance the child loads. */
export function greetingDelayPreload(): string {
  // The child resolves 'smtp-server/lib/smtp-connection.js' to this very file: one module instance.
  const path = fileURLToPath(SMTP_CONNECTION_URL);
  return [
    `import { SMTPConnection } from ${JSON.stringify(path)};`,
    'SMTPConnection.prototype.init = function init() {',
    '  this._setListeners(() => this.connectionReady());',
    '};',
    '',
  ].join('\n');
}
