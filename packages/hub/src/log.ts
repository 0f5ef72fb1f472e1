/** The hub's one owner of pino. Components take `logger.child({ component })`. */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/** Paths that must never reach a log line, whatever a caller passes. */
const REDACT = [
  'key',
  'keyPem',
  'privateKey',
  'token',
  'permit.token',
  'csr',
  'certificate',
  'cert',
  'ca',
  '*.key',
  '*.token',
  '*.privateKey',
  '*.certificate',
];

export function createLogger(level = 'info', destination?: DestinationStream): Logger {
  return pino(
    { level, base: { app: 'ztm-hub' }, redact: { paths: REDACT, censor: '[redacted]' }, timestamp: pino.stdTimeFunctions.isoTime },
    destination ?? pino.destination({ fd: 1, sync: true }),
  );
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
