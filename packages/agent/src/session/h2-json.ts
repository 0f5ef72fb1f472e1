/** JSON request/response over a client HTTP/2 session. */
import type { ClientHttp2Session } from 'node:http2';
import { ErrorCodes, Headers, JSON_CONTENT_TYPE, PROTOCOL_VERSION, ZtmError, fromWire, readJsonBody } from '@ztm/proto';

export function requestJson<T>(session: ClientHttp2Session, method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = 15_000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = session.request({
      ':method': method,
      ':path': path,
      [Headers.version]: String(PROTOCOL_VERSION),
      ...(payload ? { 'content-type': JSON_CONTENT_TYPE } : {}),
    });
    req.setTimeout(timeoutMs, () => req.close());
    let status = 0;
    req.on('response', (h) => {
      status = Number(h[':status']);
    });
    readJsonBody(req, 16 * 1024 * 1024)
      .then((out) => {
        if (status === 0) reject(new ZtmError(ErrorCodes.HUB_UNREACHABLE, `hub closed the ${path} request without answering`));
        else if (status >= 400) reject(fromWire(out, status));
        else resolve(out as T);
      })
      .catch((err: Error) =>
        reject(err instanceof ZtmError ? err : new ZtmError(ErrorCodes.HUB_UNREACHABLE, `request ${path} failed: ${err.message}`, { cause: err })),
      );
    req.end(payload);
  });
}
