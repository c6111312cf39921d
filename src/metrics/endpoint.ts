// The metrics endpoint: GET /metrics in Prometheus' text format on `[metrics] address`
// (host:port; off when empty, as containerd's). Plain HTTP without auth, like containerd's and
// kubelet's read-only figures: bind it to loopback or a node-internal address. Nothing else is
// served; slow or idle clients are cut by short timeouts, so a scraper cannot hold the daemon.
import http from 'node:http';
import type net from 'node:net';
import type { Logger } from '../util/log';
import type { DaemonMetrics } from './daemon-metrics';

export interface MetricsEndpoint {
  /** the address it listens on, host:port */
  readonly address: string;
  close(): Promise<void>;
}

/** Listens on `host:port`; rejects (with the address in the message) when it cannot. */
export async function serveMetrics(metrics: DaemonMetrics, host: string, port: number, logger: Logger): Promise<MetricsEndpoint> {
  const server = http.createServer({ requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000 }, (req, res) => {
    const url = req.url?.split('?')[0];
    if (url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('podvisor serves /metrics only\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('GET /metrics\n');
      return;
    }
    metrics.text().then(
      (body) => {
        res.writeHead(200, { 'content-type': metrics.contentType });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: Error) => {
        logger.error({ err }, 'metrics collection failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n');
      },
    );
  });
  server.maxHeadersCount = 64;
  const shown = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`cannot serve metrics on ${shown} ([metrics] address): ${err.code ?? err.message}`)));
    server.listen(port, host, () => resolve());
  });
  const bound = server.address() as net.AddressInfo;
  const address = bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`;
  logger.info({ address }, 'serving metrics on /metrics');
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
