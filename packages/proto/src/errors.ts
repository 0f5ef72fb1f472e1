/**
 * Errors are data: every error that crosses a module or process boundary is a
 * ZtmError with a stable `code`. Code branches on `code`, never on message text.
 * Peers see `{ error: { code, message } }` and never a stack trace.
 */
export const ErrorCodes = {
  /** A frame could not be decoded (bad length, bad JSON). */
  BAD_FRAME: 'ZTM_ERR_BAD_FRAME',
  /** A frame announced more bytes than the limit allows. */
  FRAME_TOO_LARGE: 'ZTM_ERR_FRAME_TOO_LARGE',
  /** A decoded message does not match its schema. */
  BAD_MESSAGE: 'ZTM_ERR_BAD_MESSAGE',
  /** The request body or a parameter is not acceptable. */
  BAD_REQUEST: 'ZTM_ERR_BAD_REQUEST',
  UNSUPPORTED_VERSION: 'ZTM_ERR_UNSUPPORTED_VERSION',
  /** The permit file is not a permit (bad JSON or missing fields). */
  PERMIT_INVALID: 'ZTM_ERR_PERMIT_INVALID',
  /** The permit's signature does not match its content. */
  PERMIT_TAMPERED: 'ZTM_ERR_PERMIT_TAMPERED',
  PERMIT_EXPIRED: 'ZTM_ERR_PERMIT_EXPIRED',
  /** The permit's join token was already used. */
  TOKEN_USED: 'ZTM_ERR_TOKEN_USED',
  /** The hub has no record of the permit's join token. */
  TOKEN_UNKNOWN: 'ZTM_ERR_TOKEN_UNKNOWN',
  /** The permit (or certificate) belongs to another mesh. */
  WRONG_MESH: 'ZTM_ERR_WRONG_MESH',
  /** The endpoint name is bound to another key. */
  NAME_TAKEN: 'ZTM_ERR_NAME_TAKEN',
  /** The certificate or endpoint was revoked. */
  REVOKED: 'ZTM_ERR_REVOKED',
  CSR_INVALID: 'ZTM_ERR_CSR_INVALID',
  /** No (valid) client certificate. */
  UNAUTHENTICATED: 'ZTM_ERR_UNAUTHENTICATED',
  FORBIDDEN: 'ZTM_ERR_FORBIDDEN',
  NOT_FOUND: 'ZTM_ERR_NOT_FOUND',
  /** The hub's certificate is not from the permit's CA. */
  HUB_UNTRUSTED: 'ZTM_ERR_HUB_UNTRUSTED',
  HUB_UNREACHABLE: 'ZTM_ERR_HUB_UNREACHABLE',
  NOT_ENROLLED: 'ZTM_ERR_NOT_ENROLLED',
  ALREADY_ENROLLED: 'ZTM_ERR_ALREADY_ENROLLED',
  NOT_RUNNING: 'ZTM_ERR_NOT_RUNNING',
  CONFIG: 'ZTM_ERR_CONFIG',
  TIMEOUT: 'ZTM_ERR_TIMEOUT',
  TOO_MANY: 'ZTM_ERR_TOO_MANY',
  OFFLINE: 'ZTM_ERR_OFFLINE',
  /** No online endpoint holds an outbound end that accepts this entrance. */
  NO_EXIT: 'ZTM_ERR_NO_EXIT',
  /** The exit could not connect to any target (refused, unreachable). */
  TARGET_UNREACHABLE: 'ZTM_ERR_TARGET_UNREACHABLE',
  /** A listener could not be opened (port in use, no permission). */
  LISTEN_FAILED: 'ZTM_ERR_LISTEN_FAILED',
  CLOSED: 'ZTM_ERR_CLOSED',
  /** The hub's disk refused a write (read-only, full, not permitted); nothing was recorded. */
  STORAGE: 'ZTM_ERR_STORAGE',
  INTERNAL: 'ZTM_ERR_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** HTTP status a hub or admin API answers with for each code. */
export const errorHttpStatus: Record<ErrorCode, number> = {
  ZTM_ERR_BAD_FRAME: 400,
  ZTM_ERR_FRAME_TOO_LARGE: 413,
  ZTM_ERR_BAD_MESSAGE: 400,
  ZTM_ERR_BAD_REQUEST: 400,
  ZTM_ERR_UNSUPPORTED_VERSION: 426,
  ZTM_ERR_PERMIT_INVALID: 400,
  ZTM_ERR_PERMIT_TAMPERED: 403,
  ZTM_ERR_PERMIT_EXPIRED: 403,
  ZTM_ERR_TOKEN_USED: 403,
  ZTM_ERR_TOKEN_UNKNOWN: 403,
  ZTM_ERR_WRONG_MESH: 403,
  ZTM_ERR_NAME_TAKEN: 409,
  ZTM_ERR_REVOKED: 403,
  ZTM_ERR_CSR_INVALID: 400,
  ZTM_ERR_UNAUTHENTICATED: 401,
  ZTM_ERR_FORBIDDEN: 403,
  ZTM_ERR_NOT_FOUND: 404,
  ZTM_ERR_HUB_UNTRUSTED: 502,
  ZTM_ERR_HUB_UNREACHABLE: 502,
  ZTM_ERR_NOT_ENROLLED: 409,
  ZTM_ERR_ALREADY_ENROLLED: 409,
  ZTM_ERR_NOT_RUNNING: 503,
  ZTM_ERR_CONFIG: 400,
  ZTM_ERR_TIMEOUT: 504,
  ZTM_ERR_TOO_MANY: 429,
  ZTM_ERR_OFFLINE: 503,
  ZTM_ERR_NO_EXIT: 502,
  ZTM_ERR_TARGET_UNREACHABLE: 502,
  ZTM_ERR_LISTEN_FAILED: 409,
  ZTM_ERR_CLOSED: 503,
  ZTM_ERR_STORAGE: 507,
  ZTM_ERR_INTERNAL: 500,
};

/** Codes after which an agent must not retry: a human has to act. */
const FATAL: ReadonlySet<string> = new Set<ErrorCode>([
  ErrorCodes.REVOKED,
  ErrorCodes.UNAUTHENTICATED,
  ErrorCodes.NAME_TAKEN,
  ErrorCodes.WRONG_MESH,
  ErrorCodes.HUB_UNTRUSTED,
  ErrorCodes.PERMIT_TAMPERED,
  ErrorCodes.PERMIT_EXPIRED,
  ErrorCodes.PERMIT_INVALID,
  ErrorCodes.TOKEN_USED,
  ErrorCodes.TOKEN_UNKNOWN,
  ErrorCodes.UNSUPPORTED_VERSION,
]);

export interface ZtmErrorOptions {
  cause?: unknown;
  retryable?: boolean;
  /** Extra fields safe to show to a peer or an operator (never secrets). */
  details?: Record<string, unknown>;
}

export class ZtmError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: ZtmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ZtmError';
    this.code = code;
    this.retryable = options.retryable ?? !FATAL.has(code);
    this.details = options.details;
  }

  /** The shape sent to peers: code and message only. */
  toWire(): WireError {
    return { error: { code: this.code, message: this.message } };
  }
}

export interface WireError {
  error: { code: string; message: string };
}

export function isZtmError(err: unknown, code?: ErrorCode): err is ZtmError {
  return err instanceof ZtmError && (code === undefined || err.code === code);
}

/** Turn anything thrown into a ZtmError without leaking internals. */
export function toZtmError(err: unknown, fallback: ErrorCode = ErrorCodes.INTERNAL): ZtmError {
  if (err instanceof ZtmError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new ZtmError(fallback, message, { cause: err });
}

/** Rebuild a ZtmError from a peer's `{ error: { code, message } }` body. */
export function fromWire(body: unknown, status?: number): ZtmError {
  const e = (body as WireError | undefined)?.error;
  if (e && typeof e.code === 'string' && typeof e.message === 'string') {
    const code = (Object.values(ErrorCodes) as string[]).includes(e.code) ? (e.code as ErrorCode) : ErrorCodes.INTERNAL;
    return new ZtmError(code, e.message);
  }
  return new ZtmError(ErrorCodes.INTERNAL, `unexpected answer${status ? ` (HTTP ${status})` : ''}`);
}

export function isFatal(code: string): boolean {
  return FATAL.has(code);
}
