// One pino logger for the daemon. Never log credentials: the redact list covers the CRI
// AuthConfig fields wherever they appear. Format "json" (default: one pino object a line, for
// journald and log shippers) or "text" (pino-pretty, synchronous, one line an entry with level
// names, errors with their stack and code: for a person reading the journal). Errors go under
// `err` as the Error itself, never its message: pino's serializer then keeps type, message,
// stack and code (PodvisorError's, errno's), in both formats (test/error-logging.test.ts).
import pino from 'pino';
import pretty from 'pino-pretty';

export type LogFormat = 'json' | 'text';

export type Logger = pino.Logger;

/** `fd`: 1 (stdout, the daemon's) or 2 (stderr, for CLI commands whose stdout is their result). */
export function createLogger(level = process.env.PODVISOR_LOG_LEVEL ?? 'info', format: LogFormat = (process.env.PODVISOR_LOG_FORMAT as LogFormat) ?? 'json', fd: 1 | 2 = 1): Logger {
  const opts: pino.LoggerOptions = {
    level,
    base: { svc: 'podvisor' },
    redact: {
      paths: ['*.password', '*.auth', '*.identity_token', '*.registry_token', '*.key', '*.secret', 'auth', 'password'],
      censor: '[redacted]',
    },
  };
  if (format !== 'text') return fd === 1 ? pino(opts) : pino(opts, pino.destination({ fd, sync: true }));
  return pino(opts, pretty({ destination: fd, sync: true, colorize: false, translateTime: 'UTC:yyyy-mm-dd\'T\'HH:MM:ss.l\'Z\'', ignore: 'pid,hostname,svc', singleLine: true }));
}

/** A logger that drops everything, for tests and tools. */
export const silentLogger: Logger = pino({ level: 'silent' });
