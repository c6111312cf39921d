// Port forwarding, as kubelet serves it (pkg/kubelet/cri/streaming/portforward):
// - SPDY (portforward.k8s.io): the client opens, per forwarded connection, an `error` and a
//   `data` stream carrying the same `port` and `requestID` headers; once both are there the
//   data stream is the connection to the pod's port, and a failure is reported as text on the
//   error stream. Any number of connections, concurrently, on one SPDY session.
// - WebSocket (v4.channel.k8s.io, v4.base64.channel.k8s.io, portforward.k8s.io): one connection per
//   `port` query parameter, on channels 2i (data) and 2i+1 (error); the server's first frame on
//   each channel is the port as 2 bytes little-endian. The socket closes once all are done.
import type { Duplex } from 'node:stream';
import type { Logger } from '../util/log';
import type { StreamingBackend } from './backend';
import type { SpdySession, SpdyStream } from './spdy';
import type { PortForwardRequest } from './tokens';
import type { WsChannelConnection } from './websocket';

export const SPDY_PORTFORWARD_PROTOCOLS = ['portforward.k8s.io'];
export const WS_PORTFORWARD_PROTOCOLS = ['v4.channel.k8s.io', 'v4.base64.channel.k8s.io', 'portforward.k8s.io'];

export function parsePort(value: unknown): number | undefined {
  const n = Number(value);
  return Number.isInteger(n) && n > 0 && n < 65536 ? n : undefined;
}

const forwardError = (port: number, sandboxId: string, err: unknown) =>
  `error forwarding port ${port} to pod ${sandboxId}: ${err instanceof Error ? err.message : String(err)}`;

/** Waits until both sides of a forwarded connection are finished with (or torn down). */
function settled(s: Duplex): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve();
    s.once('close', () => resolve());
  });
}

export function servePortForwardSpdy(
  session: SpdySession,
  backend: StreamingBackend,
  req: PortForwardRequest,
  log: Logger,
  streamTimeoutMs: number,
): void {
  const pending = new Map<string, { data?: SpdyStream; error?: SpdyStream; timer: NodeJS.Timeout }>();

  const start = async (data: SpdyStream, error: SpdyStream) => {
    error.resume(); // the client never writes on it
    const port = parsePort(data.headers['port']);
    try {
      if (port === undefined) throw new Error(`invalid port ${JSON.stringify(data.headers['port'])}`);
      await backend.portForward(req.sandboxId, port, data);
    } catch (err) {
      log.info({ err, sandbox: req.sandboxId, port }, 'port-forward failed');
      if (!error.destroyed) error.write(forwardError(port ?? 0, req.sandboxId, err));
    }
    // as kubelet: both streams are closed (FIN, not reset) whatever happened
    if (!data.destroyed && !data.writableEnded) data.end();
    if (!error.destroyed && !error.writableEnded) error.end();
  };

  session.on('stream', (stream) => {
    const type = stream.headers['streamtype'];
    if (type !== 'data' && type !== 'error') {
      log.debug({ type }, 'unexpected port-forward stream');
      stream.destroy();
      return;
    }
    const requestId = stream.headers['requestid'] ?? String(type === 'error' ? stream.id : stream.id - 2);
    let p = pending.get(requestId);
    if (!p) {
      p = {
        timer: setTimeout(() => {
          const q = pending.get(requestId);
          pending.delete(requestId);
          if (q?.error && !q.error.destroyed) q.error.end('timed out waiting for the data stream');
          q?.data?.destroy();
        }, streamTimeoutMs),
      };
      p.timer.unref();
      pending.set(requestId, p);
    }
    if (p[type]) {
      stream.destroy();
      return;
    }
    p[type] = stream;
    if (p.data && p.error) {
      clearTimeout(p.timer);
      pending.delete(requestId);
      void start(p.data, p.error);
    }
  });
  session.on('close', () => {
    for (const p of pending.values()) clearTimeout(p.timer);
    pending.clear();
  });
}

export async function servePortForwardWs(
  conn: WsChannelConnection,
  backend: StreamingBackend,
  req: PortForwardRequest,
  ports: number[],
  log: Logger,
): Promise<void> {
  await Promise.all(
    ports.map(async (port, i) => {
      const data = conn.channel(2 * i);
      const error = conn.channel(2 * i + 1);
      const prefix = Buffer.from([port & 0xff, port >> 8]);
      conn.send(2 * i, prefix);
      conn.send(2 * i + 1, prefix);
      // a WebSocket channel cannot be half-closed: once the pod's side ended, so has the connection
      data.once('finish', () => {
        data.endInput();
      });
      try {
        await backend.portForward(req.sandboxId, port, data);
      } catch (err) {
        log.info({ err, sandbox: req.sandboxId, port }, 'port-forward failed');
        if (!error.destroyed) error.write(Buffer.from(forwardError(port, req.sandboxId, err)));
      }
      if (!data.destroyed && !data.writableEnded) data.end();
      await settledOrClosed(data, conn);
    }),
  );
  conn.close();
}

/** Writes on a WebSocket channel are done once 'finish' fired (or the socket went away). */
function settledOrClosed(ch: Duplex, conn: WsChannelConnection): Promise<void> {
  if (conn.isClosed || ch.writableFinished) return Promise.resolve();
  return Promise.race([new Promise<void>((r) => ch.once('finish', () => r())), settled(ch)]);
}
