// Local OCI registries for tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1
// over plain HTTP, anonymous, with htpasswd Basic auth, or with token auth backed by a tiny
// token server written here (RS256 JWTs signed with node:crypto, cert made by openssl).
// Also a counting/faulty HTTP proxy to observe or break blob downloads.
// Every start*() returns a stop() that kills the process and deletes its temp dir.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createPrivateKey, randomBytes, sign, X509Certificate } from 'node:crypto';
import { promises as fsp, readFileSync, mkdtempSync, openSync, closeSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface Registry {
  /** 'http://127.0.0.1:PORT' */
  url: string;
  /** '127.0.0.1:PORT', the registry domain for references */
  host: string;
  /** Root of the registry's filesystem storage (docker/registry/v2/…). */
  storage: string;
  /** Credentials to push/pull with, when auth is on. */
  creds?: { username: string; password: string };
  token?: TokenServer;
  logFile: string;
  stop(): Promise<void>;
}

export interface RegistryOptions {
  auth?: 'none' | 'htpasswd' | 'token';
  username?: string;
  password?: string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitHttp(url: string, ok: (status: number) => boolean, proc: ChildProcess, logFile: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  let exited = false;
  proc.once('exit', () => (exited = true));
  while (Date.now() < deadline) {
    if (exited) throw new Error(`registry exited early: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (ok(res.status)) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`registry at ${url} did not come up: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
}

function killAndWait(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    p.once('exit', () => resolve());
    p.kill('SIGTERM');
    setTimeout(() => p.kill('SIGKILL'), 3000).unref();
  });
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'podvisor-registry-'));
  const storage = path.join(dir, 'storage');
  await fsp.mkdir(storage);
  const port = await freePort();
  const username = opts.username ?? 'alice';
  const password = opts.password ?? 'wonderland';
  let authYaml = '';
  let token: TokenServer | undefined;
  if (opts.auth === 'htpasswd') {
    const htpasswd = execFileSync('htpasswd', ['-Bbn', username, password], { encoding: 'utf8' });
    await fsp.writeFile(path.join(dir, 'htpasswd'), htpasswd);
    authYaml = `auth:\n  htpasswd:\n    realm: podvisor-test\n    path: ${path.join(dir, 'htpasswd')}\n`;
  } else if (opts.auth === 'token') {
    token = await startTokenServer({ users: { [username]: password }, service: 'podvisor-test-registry' });
    authYaml = `auth:\n  token:\n    realm: ${token.url}/token\n    service: ${token.service}\n    issuer: ${token.issuer}\n    rootcertbundle: ${token.certFile}\n`;
  }
  const config = `version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: ${storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:${port}
${authYaml}`;
  await fsp.writeFile(path.join(dir, 'config.yml'), config);
  const logFile = path.join(dir, 'registry.log');
  const fd = openSync(logFile, 'a');
  const proc = spawn('/usr/bin/docker-registry', ['serve', path.join(dir, 'config.yml')], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitHttp(`${url}/v2/`, (s) => s === 200 || s === 401, proc, logFile);
  } catch (e) {
    await killAndWait(proc);
    await token?.stop();
    await fsp.rm(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    url,
    host: `127.0.0.1:${port}`,
    storage,
    creds: opts.auth && opts.auth !== 'none' ? { username, password } : undefined,
    token,
    logFile,
    async stop() {
      await killAndWait(proc);
      await token?.stop();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

/** Path of a blob's data file in the registry's storage (to corrupt it in tests). */
export function registryBlobPath(r: Registry, digest: string): string {
  const hex = digest.replace(/^sha256:/, '');
  return path.join(r.storage, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
}

// ---- token server ----------------------------------------------------------------------

export interface TokenServer {
  url: string;
  service: string;
  issuer: string;
  certFile: string;
  /** Requests seen: for asserting the flow happened. */
  requests: { method: string; account?: string; scope: string[]; grant?: string }[];
  /** A valid refresh token for the identity_token (OAuth2) flow. */
  refreshToken: string;
  /** Issues a token directly (for the CRI registry_token field). */
  issue(access: { type: string; name: string; actions: string[] }[], subject?: string): string;
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

export async function startTokenServer(opts: { users: Record<string, string>; service: string }): Promise<TokenServer> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'podvisor-token-'));
  const keyFile = path.join(dir, 'key.pem');
  const certFile = path.join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=podvisor-test-token-issuer'], { stdio: 'ignore' });
  const key = createPrivateKey(readFileSync(keyFile));
  const certDer = new X509Certificate(readFileSync(certFile)).raw;
  const issuer = 'podvisor-test-issuer';
  const refreshToken = randomBytes(16).toString('hex');
  const requests: TokenServer['requests'] = [];

  const issue = (access: { type: string; name: string; actions: string[] }[], subject = 'anonymous') => {
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'RS256', x5c: [certDer.toString('base64')] };
    const claims = { iss: issuer, sub: subject, aud: opts.service, exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString('hex'), access };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    return `${input}.${b64url(sign('sha256', Buffer.from(input), key))}`;
  };
  const grant = (scopes: string[], who: string | undefined) =>
    scopes
      .map((s) => s.split(':'))
      .filter((p) => p.length >= 3 && p[0] === 'repository')
      // Anonymous callers get nothing; known users get what they ask for.
      .map((p) => ({ type: 'repository', name: p.slice(1, -1).join(':'), actions: who ? p[p.length - 1].split(',') : [] }));

  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const u = new URL(req.url ?? '/', 'http://x');
      const reply = (status: number, obj: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      if (u.pathname !== '/token') return reply(404, {});
      if (req.method === 'POST') {
        const f = new URLSearchParams(body);
        const scopes = (f.get('scope') ?? '').split(' ').filter(Boolean);
        requests.push({ method: 'POST', scope: scopes, grant: f.get('grant_type') ?? undefined });
        if (f.get('grant_type') !== 'refresh_token' || f.get('refresh_token') !== refreshToken) return reply(401, { error: 'invalid_grant' });
        return reply(200, { access_token: issue(grant(scopes, 'oauth-user'), 'oauth-user'), expires_in: 300 });
      }
      const scopes = u.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
      let who: string | undefined;
      const a = req.headers.authorization;
      if (a?.startsWith('Basic ')) {
        const [user, ...rest] = Buffer.from(a.slice(6), 'base64').toString().split(':');
        if (opts.users[user] !== rest.join(':')) {
          requests.push({ method: 'GET', account: user, scope: scopes });
          return reply(401, { errors: [{ code: 'UNAUTHORIZED' }] });
        }
        who = user;
      }
      requests.push({ method: 'GET', account: who, scope: scopes });
      const t = issue(grant(scopes, who), who);
      reply(200, { token: t, access_token: t, expires_in: 300, issued_at: new Date().toISOString() });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    service: opts.service,
    issuer,
    certFile,
    requests,
    refreshToken,
    issue,
    async stop() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

// ---- counting / faulty proxy -----------------------------------------------------------

export interface Proxy {
  url: string;
  host: string;
  /** Number of GETs per request path, e.g. '/v2/x/blobs/sha256:…'. */
  counts: Map<string, number>;
  blobGets(digest: string): number;
  /** Cut the body of the next GETs of this blob after `bytes` bytes (connection destroyed). */
  breakBlob(digest: string | undefined, bytes?: number): void;
  /** Answer the next `times` GETs of this blob with HTTP `status` and a distribution error body. */
  refuseBlob(digest: string, status: number, times: number): void;
  /** Delay each blob response by ms (to make concurrent pulls overlap). */
  delayMs: number;
  stop(): Promise<void>;
}

export async function startProxy(target: string): Promise<Proxy> {
  const counts = new Map<string, number>();
  let broken: { digest: string; bytes: number } | undefined;
  const refused = new Map<string, { status: number; times: number }>();
  const state = { delayMs: 0 };
  const t = new URL(target);
  const server = http.createServer((req, res) => {
    const p = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET') counts.set(p, (counts.get(p) ?? 0) + 1);
    const go = () => {
      const r = req.method === 'GET' ? [...refused].find(([d, v]) => v.times > 0 && p.endsWith(`/blobs/${d}`)) : undefined;
      if (r) {
        r[1].times--;
        req.resume();
        res.writeHead(r[1].status, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'REFUSED_BY_TEST_PROXY', message: 'refused' }] }));
        return;
      }
      const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: { ...req.headers, host: t.host } }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        const cut = broken && p.endsWith(`/blobs/${broken.digest}`) ? broken.bytes : -1;
        if (cut < 0) {
          ur.pipe(res);
          return;
        }
        let sent = 0;
        ur.on('data', (chunk: Buffer) => {
          if (sent + chunk.length >= cut) {
            res.write(chunk.subarray(0, cut - sent));
            res.socket?.destroy();
            ur.destroy();
            return;
          }
          sent += chunk.length;
          res.write(chunk);
        });
        ur.on('end', () => res.end());
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    if (state.delayMs && p.includes('/blobs/')) setTimeout(go, state.delayMs);
    else go();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const proxy: Proxy = {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    counts,
    blobGets: (d) => [...counts.entries()].filter(([k]) => k.endsWith(`/blobs/${d}`)).reduce((n, [, v]) => n + v, 0),
    breakBlob(digest, bytes = 1000) {
      broken = digest ? { digest, bytes } : undefined;
    },
    refuseBlob(digest, status, times) {
      refused.set(digest, { status, times });
    },
    get delayMs() {
      return state.delayMs;
    },
    set delayMs(v: number) {
      state.delayMs = v;
    },
    async stop() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
  return proxy;
}
