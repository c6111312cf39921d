// A Kubernetes-style SPDY/3.1 client for tests: HTTP upgrade by hand, then spdy-transport (an
// independent SPDY implementation) in client mode, opening streams named by `streamType` the
// way client-go's remotecommand/portforward do.
import * as http from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const transport = require('spdy-transport');

export interface SpdyClient {
  protocol: string;
  socket: Socket;
  open(headers: Record<string, string>): Duplex & { id: number };
  close(): void;
}

export class UpgradeError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
    readonly headers: http.IncomingHttpHeaders,
  ) {
    super(`upgrade failed: ${status} ${body}`);
  }
}

export function spdyConnect(url: string, protocols: string[]): Promise<SpdyClient> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { Connection: 'Upgrade', Upgrade: 'SPDY/3.1' };
    if (protocols.length) headers['X-Stream-Protocol-Version'] = protocols;
    const req = http.request(url, { method: 'POST', headers });
    req.on('error', reject);
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => reject(new UpgradeError(res.statusCode ?? 0, body.trim(), res.headers)));
    });
    req.on('upgrade', (res, socket: Socket, head: Buffer) => {
      if (head.length) socket.unshift(head);
      const conn = transport.connection.create(socket, { protocol: 'spdy', isServer: false });
      conn.start(3.1);
      conn.on('error', () => undefined);
      resolve({
        protocol: String(res.headers['x-stream-protocol-version'] ?? ''),
        socket,
        open: (h) => {
          const s = conn.request({ method: 'POST', path: '/', headers: h });
          // SYN_STREAM now, so that stream ids go out in order (spdy-transport otherwise sends
          // it at the first write/end or on the next tick, whichever comes first)
          s.send();
          return s;
        },
        close: () => socket.destroy(),
      });
    });
    req.end();
  });
}

export const collect = (s: NodeJS.ReadableStream): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
  });

export interface SpdyExecResult {
  stdout: string;
  stderr: string;
  status: string;
}

/** client-go's v4 remotecommand client: error stream first, then stdin/stdout/stderr/resize. */
export async function spdyExec(
  url: string,
  opts: { stdin?: boolean; stdout?: boolean; stderr?: boolean; tty?: boolean; protocol?: string; input?: (stdin: Duplex) => void; resize?: (r: Duplex) => void },
): Promise<SpdyExecResult> {
  const c = await spdyConnect(url, [opts.protocol ?? 'v4.channel.k8s.io']);
  const error = c.open({ streamType: 'error' });
  error.end();
  const status = collect(error);
  if (opts.stdin) {
    const stdin = c.open({ streamType: 'stdin' });
    stdin.resume();
    opts.input?.(stdin);
  }
  let stdout: Promise<Buffer> = Promise.resolve(Buffer.alloc(0));
  let stderr: Promise<Buffer> = Promise.resolve(Buffer.alloc(0));
  if (opts.stdout !== false) {
    const s = c.open({ streamType: 'stdout' });
    s.end();
    stdout = collect(s);
  }
  if (opts.stderr && !opts.tty) {
    const s = c.open({ streamType: 'stderr' });
    s.end();
    stderr = collect(s);
  }
  if (opts.tty) {
    const r = c.open({ streamType: 'resize' });
    r.resume();
    opts.resize?.(r);
  }
  const [o, e, st] = await Promise.all([stdout, stderr, status]);
  c.close();
  return { stdout: o.toString(), stderr: e.toString(), status: st.toString() };
}

/**
 * Attaches (v4, no tty) to a container whose process echoes stdin (`cat`), writes `line`, waits
 * until exactly that came back on stdout and leaves by closing stdin: the error stream's status.
 */
export async function spdyAttachEcho(url: string, line: string, ms = 60_000): Promise<string> {
  const c = await spdyConnect(url, ['v4.channel.k8s.io']);
  try {
    const error = c.open({ streamType: 'error' });
    error.end();
    const status = collect(error);
    const stdin = c.open({ streamType: 'stdin' });
    const stdout = c.open({ streamType: 'stdout' });
    const stderr = c.open({ streamType: 'stderr' });
    stdout.end();
    stderr.end();
    stdin.resume();
    let got = '';
    let timer: NodeJS.Timeout | undefined;
    const echoed = new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`attach: ${JSON.stringify(line)} not echoed within ${ms} ms (got ${JSON.stringify(got)})`)), ms);
      stdout.on('data', (b: Buffer) => {
        got += b.toString();
        if (got === line) resolve();
      });
    });
    stdin.write(line);
    try {
      await echoed;
    } finally {
      clearTimeout(timer);
    }
    stdin.end();
    return (await status).toString();
  } finally {
    c.close();
  }
}

/**
 * One forwarded HTTP/1.0 GET on a port-forward session's data/error stream pair (kubectl's
 * layout): the response and the error stream's text. The client never half-closes the data
 * stream: once the server in the pod closed the connection, podvisor must close both streams by
 * itself (older client-go waits for that), each within `ms`.
 */
export async function spdyHttpGet(c: SpdyClient, requestID: string, port: number, urlPath = '/', ms = 60_000): Promise<{ response: string; error: string }> {
  const error = c.open({ streamType: 'error', port: String(port), requestID });
  error.end();
  const errText = collect(error);
  const data = c.open({ streamType: 'data', port: String(port), requestID });
  const body = collect(data);
  data.write(`GET ${urlPath} HTTP/1.0\r\nHost: pod\r\n\r\n`);
  const within = async <T>(p: Promise<T>, what: string): Promise<T> => {
    let t: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what} of request ${requestID} not closed within ${ms} ms`)), ms)));
    try {
      return await Promise.race([p, late]);
    } finally {
      clearTimeout(t);
    }
  };
  return { response: (await within(body, 'data stream')).toString(), error: (await within(errText, 'error stream')).toString() };
}
