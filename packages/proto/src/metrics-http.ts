/**
 * The opt-in observability listener of hub and agent (`--metrics HOST:PORT`):
 * `/metrics` (Prometheus text, from the daemon's own registry), `/healthz`
 * (the process serves requests) and `/readyz` (the daemon can do its job).
 * It serves no data of the mesh and takes no input; bind it to loopback or a
 * scrape network.
 */
import { type Server, createServer } from 'node:http';
import { ErrorCodes, ZtmError } from './errors.js';

export interface MetricsSource {
  metrics(): Promise<{ contentType: string; body: string }>;
  ready(): { ok: boolean; detail: string };
}

export async function startMetricsServer(hostPort: string, source: MetricsSource): Promise<Server> {
  const m = /^\[(.+)\]:(\d+)$/.exec(hostPort) ?? /^(.+):(\d+)$/.exec(hostPort);
  if (!m) throw new ZtmError(ErrorCodes.CONFIG, `--metrics ${hostPort} is not host:port`);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') {
      res.writeHead(405).end();
      return;
    }
    if (path === '/metrics') {
      source.metrics().then(
        ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
        () => res.writeHead(500).end('metrics failed\n'),
      );
    } else if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const r = source.ready();
      res.writeHead(r.ok ? 200 : 503, { 'content-type': 'text/plain' }).end(`${r.detail}\n`);
    } else res.writeHead(404).end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new ZtmError(ErrorCodes.CONFIG, `cannot listen for metrics on ${hostPort}: ${err.code ?? err.message}`, { cause: err })),
    );
    server.listen(Number(m[2]), m[1], () => resolve());
  });
  return server;
}
