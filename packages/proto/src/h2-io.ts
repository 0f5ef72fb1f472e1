/** Small helpers to answer HTTP/2 streams with JSON and typed errors. */
import type { ServerHttp2Stream } from 'node:http2';
import { readJsonBody } from './admin-http.js';
import { ErrorCodes, ZtmError, errorHttpStatus, toZtmError } from './errors.js';
import { MAX_REQUEST_BODY_BYTES } from './limits.js';
import { JSON_CONTENT_TYPE } from './paths.js';

export function respondJson(stream: ServerHttp2Stream, status: number, body: unknown): void {
  if (stream.destroyed || stream.closed) return;
  const payload = Buffer.from(JSON.stringify(body));
  if (!stream.headersSent) stream.respond({ ':status': status, 'content-type': JSON_CONTENT_TYPE, 'content-length': payload.length });
  stream.end(payload);
}

export function respondError(stream: ServerHttp2Stream, err: unknown): void {
  const e = toZtmError(err);
  // Internal errors keep their details in our logs, not in the peer's answer.
  const wire = e.code === ErrorCodes.INTERNAL ? new ZtmError(ErrorCodes.INTERNAL, 'internal error') : e;
  respondJson(stream, errorHttpStatus[wire.code], wire.toWire());
}

export function readStreamJson(stream: ServerHttp2Stream, maxBytes = MAX_REQUEST_BODY_BYTES): Promise<unknown> {
  return readJsonBody(stream, maxBytes);
}
