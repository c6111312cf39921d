// One pino logger for the daemon. Never log credentials: the redact list covers the CRI
// AuthConfig fields wherever they appear. Format "json" (default: one pino object a line, for
// journald and log shippers) or "text" (pino-pretty, synchronous, one line an entry with level
// names, errors with their stack and code: for a person reading the journal).
import pino from 'pino';
import pretty from 'pino-pretty';

export type LogFormat = 'json' | 'text';

export type Logger = pino.Logger;

export function createLogger(level = process.env.PODVISOR_LOG_LEVEL ?? 'info', format: LogFormat = (process.env.PODVISOR_LOG_FORMAT as LogFormat) ?? 'json'): Logger {
  const opts: pino.LoggerOptions = {
    level,
    base: { svc: 'podvisor' },
    redact: {
      paths: ['*.password', '*.auth', '*.identity_token', '*.registry_token', '*.key', '*.secret', 'auth', 'password'],
      censor: '[redacted]',
    },
  };
  if (format !== 'text') return pino(opts);
  return pino(opts, pretty({ sync: true, colorize: false, translateTime: 'UTC:yyyy-mm-dd\'T\'HH:MM:ss.l\'Z\'', ignore: 'pid,hostname,svc', singleLine: true }));
}

/** A logger that drops everything, for tests and tools. */
export const silentLogger: Logger = pino({ level: 'silent' });
