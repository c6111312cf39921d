// podvisor's streaming server: Exec/Attach/PortForward CRI calls validate the request, store it
// under a single-use token and return a URL here (as kubelet's streaming server does); the
// client then upgrades that URL to SPDY/3.1 or WebSocket and the session runs against the
// StreamingBackend.
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { invalidArgument, requireString, unavailable } from '../util/errors';
import type { Logger } from '../util/log';
import type { StreamingBackend } from './backend';
import {
  parsePort,
  servePortForwardSpdy,
  servePortForwardWs,
  SPDY_PORTFORWARD_PROTOCOLS,
  WS_PORTFORWARD_PROTOCOLS,
} from './portforward';
import {
  Channel,
  type CommandStreams,
  serveRemoteCommand,
  SPDY_REMOTECOMMAND_PROTOCOLS,
  spdyHasResize,
  WS_REMOTECOMMAND_PROTOCOLS,
} from './remotecommand';
import { acceptSpdy, isSpdyUpgrade, type SpdySession, type SpdyStream } from './spdy';
import { type AttachRequest, type ExecRequest, type StreamRequest, TokenCache } from './tokens';
import { WsChannelConnection } from './websocket';

export interface StreamingOptions {
  /** listen address; default 127.0.0.1 */
  address: string;
  /** 0 = any free port */
  port: number;
  /** PEM text, or paths of PEM files */
  tls?: { cert: string; key: string };
  logger: Logger;
  /** token lifetime, ms (default 60 s) */
  tokenTtlMs?: number;
  /** most pending tokens (default 1000) */
  maxTokens?: number;
  /** how long a SPDY client may take to open its streams (default 30 s, as kubelet) */
  streamCreationTimeoutMs?: number;
}

const KINDS = ['exec', 'attach', 'portforward'] as const;
const WS_MAX_PAYLOAD = 16 * 1024 * 1024;

const pem = (v: string) => (v.includes('-----BEGIN') ? v : readFileSync(v, 'utf8'));

/** Splits repeated and comma-joined header values. */
function headerList(v: string | string[] | undefined): string[] {
  return (Array.isArray(v) ? v : v ? [v] : []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
}

function rejectUpgrade(socket: Duplex, code: number, message: string, extra: Record<string, string> = {}): void {
  const body = message + '\n';
  const head = [
    `HTTP/1.1 ${code} ${http.STATUS_CODES[code] ?? ''}`,
    'Content-Type: text/plain; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
    ...Object.entries(extra).map(([k, v]) => `${k}: ${v}`),
  ];
  socket.end(head.join('\r\n') + '\r\n\r\n' + body);
  setTimeout(() => socket.destroy(), 1000).unref();
}

export class StreamingServer {
  private readonly tokens: TokenCache;
  private readonly log: Logger;
  private readonly wss: WebSocketServer;
  private readonly live = new Set<{ destroy(): void }>();
  private readonly chosen = new WeakMap<http.IncomingMessage, string>();
  private server?: http.Server;
  private url = '';

  constructor(
    private readonly backend: StreamingBackend,
    private readonly opts: StreamingOptions,
  ) {
    this.log = opts.logger.child({ component: 'streaming' });
    this.tokens = new TokenCache({ ttlMs: opts.tokenTtlMs, maxEntries: opts.maxTokens });
    this.wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: WS_MAX_PAYLOAD,
      handleProtocols: (_protocols, req) => this.chosen.get(req) || false,
    });
  }

  get baseUrl(): string {
    if (!this.url) throw unavailable('streaming server is not running');
    return this.url;
  }

  async start(): Promise<void> {
    if (this.server) return;
    const server = this.opts.tls
      ? https.createServer({ cert: pem(this.opts.tls.cert), key: pem(this.opts.tls.key) })
      : http.createServer();
    server.on('request', (req, res) => this.onRequest(req, res));
    server.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
    server.on('clientError', (_err, socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.address || '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const addr = server.address() as AddressInfo;
    const host = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
    this.url = `${this.opts.tls ? 'https' : 'http'}://${host}:${addr.port}`;
    this.log.info({ url: this.url }, 'streaming server listening');
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    this.url = '';
    for (const s of this.live) s.destroy();
    this.live.clear();
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections?.();
    });
  }

  // ---- CRI side ----

  getExec(req: any): { url: string } {
    const containerId = requireString(req?.container_id, 'container_id');
    const cmd: unknown = req?.cmd;
    if (!Array.isArray(cmd) || cmd.length === 0 || !cmd.every((c) => typeof c === 'string')) {
      throw invalidArgument('cmd is required');
    }
    const r: ExecRequest = { kind: 'exec', containerId, cmd: [...cmd], ...stdioFlags(req) };
    this.backend.checkExec(containerId, r.cmd, r.tty, r.stdin);
    return this.issue(r);
  }

  getAttach(req: any): { url: string } {
    const containerId = requireString(req?.container_id, 'container_id');
    const r: AttachRequest = { kind: 'attach', containerId, ...stdioFlags(req) };
    this.backend.checkAttach(containerId, r.stdin);
    return this.issue(r);
  }

  getPortForward(req: any): { url: string } {
    const sandboxId = requireString(req?.pod_sandbox_id, 'pod_sandbox_id');
    const ports = ((req?.port ?? []) as unknown[]).map((p) => {
      const n = parsePort(p);
      if (n === undefined) throw invalidArgument(`invalid port ${JSON.stringify(p)}`);
      return n;
    });
    this.backend.checkPortForward(sandboxId);
    return this.issue({ kind: 'portforward', sandboxId, ports });
  }

  private issue(r: StreamRequest): { url: string } {
    const base = this.baseUrl;
    return { url: `${base}/${r.kind}/${this.tokens.insert(r)}` };
  }

  // ---- HTTP side ----

  private route(req: http.IncomingMessage): { kind: StreamRequest['kind']; token: string; query: URLSearchParams } | undefined {
    const u = new URL(req.url ?? '/', 'http://streaming');
    const m = /^\/([a-z]+)\/([A-Za-z0-9_-]+)\/?$/.exec(u.pathname);
    if (!m || !(KINDS as readonly string[]).includes(m[1])) return undefined;
    return { kind: m[1] as StreamRequest['kind'], token: m[2], query: u.searchParams };
  }

  private lookup(req: http.IncomingMessage) {
    const route = this.route(req);
    const r = route && this.tokens.peek(route.token);
    return route && r && r.kind === route.kind ? { ...route, r } : undefined;
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const found = this.lookup(req);
    const [code, msg] = found ? [400, 'Upgrade request required'] : [404, 'not found'];
    res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8' }).end(msg + '\n');
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', (err) => this.log.debug({ err }, 'streaming socket error'));
    const found = this.lookup(req);
    if (!found) return rejectUpgrade(socket, 404, 'not found');
    const { r, token, query } = found;
    const ws = String(req.headers.upgrade ?? '').toLowerCase() === 'websocket';
    if (!ws && !isSpdyUpgrade(req)) return rejectUpgrade(socket, 400, 'Upgrade request required (SPDY/3.1 or websocket)');

    let wsPorts: number[] = [];
    if (ws && r.kind === 'portforward') {
      const raw = [...query.getAll('port'), ...query.getAll('ports')].flatMap((s) => s.split(','));
      const ports = raw.map(parsePort);
      if (ports.some((p) => p === undefined)) return rejectUpgrade(socket, 400, `invalid port in ${JSON.stringify(raw)}`);
      wsPorts = raw.length ? (ports as number[]) : r.ports;
      if (!wsPorts.length) return rejectUpgrade(socket, 400, 'at least one port must be specified');
    }

    if (ws) {
      const supported = r.kind === 'portforward' ? WS_PORTFORWARD_PROTOCOLS : WS_REMOTECOMMAND_PROTOCOLS;
      const offered = headerList(req.headers['sec-websocket-protocol']);
      const protocol = offered.find((p) => supported.includes(p));
      if (offered.length && !protocol) {
        return rejectUpgrade(
          socket,
          400,
          `unable to upgrade: requested protocol(s) are not supported: [${offered.join(' ')}]; supports [${supported.join(' ')}]`,
        );
      }
      this.tokens.consume(token);
      this.chosen.set(req, protocol ?? '');
      this.wss.handleUpgrade(req, socket, head, (w) => this.runWebSocket(w, protocol ?? '', r, wsPorts));
      return;
    }

    const supported = r.kind === 'portforward' ? SPDY_PORTFORWARD_PROTOCOLS : SPDY_REMOTECOMMAND_PROTOCOLS;
    const offered = headerList(req.headers['x-stream-protocol-version']);
    if (!offered.length) return rejectUpgrade(socket, 400, 'unable to upgrade: X-Stream-Protocol-Version is required');
    const protocol = offered.find((p) => supported.includes(p));
    if (!protocol) {
      return rejectUpgrade(
        socket,
        403,
        `unable to upgrade: unable to negotiate protocol: client supports [${offered.join(' ')}], server accepts [${supported.join(' ')}]`,
        { 'X-Accepted-Stream-Protocol-Versions': supported.join(', ') },
      );
    }
    this.tokens.consume(token);
    this.runSpdy(acceptSpdy(socket, head, protocol, this.log), protocol, r);
  }

  private track(s: { destroy(): void }, closed: { once(e: 'close', f: () => void): unknown }): void {
    this.live.add(s);
    closed.once('close', () => this.live.delete(s));
  }

  // ---- SPDY sessions ----

  private runSpdy(session: SpdySession, protocol: string, r: StreamRequest): void {
    this.track(session, session);
    const timeout = this.opts.streamCreationTimeoutMs ?? 30_000;
    if (r.kind === 'portforward') {
      servePortForwardSpdy(session, this.backend, r, this.log, timeout);
      return;
    }
    const expected = new Set<string>(['error']);
    if (r.stdin) expected.add('stdin');
    if (r.stdout) expected.add('stdout');
    if (r.stderr && !r.tty) expected.add('stderr');
    if (r.tty && spdyHasResize(protocol)) expected.add('resize');
    const got = new Map<string, SpdyStream>();
    const timer = setTimeout(() => {
      this.log.info({ missing: [...expected].filter((t) => !got.has(t)) }, 'timed out waiting for SPDY streams');
      session.close();
    }, timeout);
    timer.unref();
    session.once('close', () => clearTimeout(timer));
    session.on('stream', (stream) => {
      const type = stream.headers['streamtype'] ?? '';
      if (!expected.has(type) || got.has(type)) {
        this.log.debug({ type }, 'unexpected SPDY stream');
        stream.destroy();
        return;
      }
      got.set(type, stream);
      this.log.debug({ type, id: stream.id }, 'SPDY stream');
      // what the client never writes on, drain (a FIN must be read for the stream to finish)
      if (type !== 'stdin' && type !== 'resize') stream.resume();
      if (got.size < expected.size) return;
      clearTimeout(timer);
      const streams: CommandStreams = {
        stdin: got.get('stdin'),
        stdout: got.get('stdout'),
        stderr: got.get('stderr'),
        resize: got.get('resize'),
        error: got.get('error')!,
      };
      void serveRemoteCommand(this.backend, r, streams, protocol, this.log).finally(() => {
        this.log.debug({ kind: r.kind }, 'SPDY session done');
        session.close();
      });
    });
  }

  // ---- WebSocket sessions ----

  private runWebSocket(ws: WebSocket, protocol: string, r: StreamRequest, ports: number[]): void {
    const base64 = protocol.includes('base64');
    if (r.kind === 'portforward') {
      const conn = new WsChannelConnection(ws, { base64, supportsClose: false, readable: ports.map((_, i) => 2 * i) }, this.log);
      this.track({ destroy: () => ws.terminate() }, conn);
      void servePortForwardWs(conn, this.backend, r, ports, this.log);
      return;
    }
    const readable: number[] = [];
    if (r.stdin) readable.push(Channel.stdin);
    if (r.tty) readable.push(Channel.resize);
    const conn = new WsChannelConnection(ws, { base64, supportsClose: protocol === 'v5.channel.k8s.io', readable }, this.log);
    this.track({ destroy: () => ws.terminate() }, conn);
    // an empty frame on the lowest channel the client reads tells it the session is up
    conn.send(r.stdout ? Channel.stdout : r.stderr ? Channel.stderr : Channel.error, Buffer.alloc(0));
    const streams: CommandStreams = {
      stdin: r.stdin ? conn.channel(Channel.stdin) : undefined,
      stdout: r.stdout ? conn.channel(Channel.stdout) : undefined,
      stderr: r.stderr && !r.tty ? conn.channel(Channel.stderr) : undefined,
      resize: r.tty ? conn.channel(Channel.resize) : undefined,
      error: conn.channel(Channel.error),
    };
    void serveRemoteCommand(this.backend, r, streams, protocol, this.log).finally(() => conn.close());
  }
}

function stdioFlags(req: any): { tty: boolean; stdin: boolean; stdout: boolean; stderr: boolean } {
  const f = { tty: !!req?.tty, stdin: !!req?.stdin, stdout: !!req?.stdout, stderr: !!req?.stderr };
  if (!f.stdin && !f.stdout && !f.stderr) throw invalidArgument('one of stdin, stdout, or stderr must be set');
  if (f.tty && f.stderr) throw invalidArgument('tty and stderr cannot both be true');
  return f;
}
