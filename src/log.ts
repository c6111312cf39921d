// One pino logger for the daemon. Never log credentials: the redact list covers the CRI
// AuthConfig fields wherever they appear.
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(level = process.env.PODVISOR_LOG_LEVEL ?? 'info'): Logger {
  return pino({
    level,
    base: { svc: 'podvisor' },
    redact: {
      paths: ['*.password', '*.auth', '*.identity_token', '*.registry_token', '*.key', '*.secret', 'auth', 'password'],
      censor: '[redacted]',
    },
  });
}

/** A logger that drops everything, for tests and tools. */
export const silentLogger: Logger = pino({ level: 'silent' });
