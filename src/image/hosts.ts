// Registry host configuration read the containerd way (config_path = <configDir>/certs.d):
//   certs.d/<host>/hosts.toml, certs.d/<host>_<port>_/hosts.toml, else certs.d/_default/hosts.toml
// so a mirror can serve e.g. registry.k8s.io while images keep their upstream names.
//   server = "https://registry.k8s.io"
//   [host."http://127.0.0.1:5000"]
//     capabilities = ["pull", "resolve"]
//     skip_verify = true
//     ca = "ca.crt"                     # relative to the host dir; string or list
//     client = [["client.crt", "client.key"]]
//     override_path = false
//     [host."http://127.0.0.1:5000".header]
//       x-custom = "1"
// Mirrors are tried in file order, then `server`. Without any file the upstream is used over
// HTTPS (Docker Hub through registry-1.docker.io); loopback hosts may fall back to plain HTTP
// like Docker's default insecure-registry rule.
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { invalidArgument } from '../util/errors';
import { defaultEndpointHost } from './reference';

export type Capability = 'pull' | 'resolve' | 'push';

export interface RegistryEndpoint {
  /** Base URL of the API including '/v2', e.g. 'https://registry-1.docker.io/v2'. */
  url: string;
  capabilities: Set<Capability>;
  skipVerify: boolean;
  /** PEM contents of extra CA certificates. */
  ca: string[];
  /** PEM cert/key pairs for TLS client authentication. */
  client: { cert: string; key: string }[];
  headers: Record<string, string>;
  /** True for the upstream server itself: only it receives the pull's CRI credentials. */
  upstream: boolean;
  /** Loopback host with no explicit config: retry over plain HTTP if TLS fails. */
  httpFallback: boolean;
}

const LOOPBACK = /^(localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?$/;

/** Candidate directories under certs.d for a registry host, most specific first. */
function hostDirs(certsDir: string, host: string): string[] {
  const dirs = [path.join(certsDir, host)];
  const i = host.lastIndexOf(':');
  if (i > 0 && !host.endsWith(']')) dirs.push(path.join(certsDir, `${host.slice(0, i)}_${host.slice(i + 1)}_`));
  dirs.push(path.join(certsDir, '_default'));
  return dirs;
}

async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch (e: any) {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return undefined;
    throw e;
  }
}

function asList(v: unknown): string[] {
  if (v === undefined) return [];
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  throw new Error(`expected a string or a list of strings, got ${JSON.stringify(v)}`);
}

/** Turns a `server`/`host` key into an API base URL (scheme defaults to https, path to /v2). */
function apiUrl(raw: string, overridePath: boolean): string {
  const withScheme = /^[a-z]+:\/\//i.test(raw) ? raw : `https://${raw}`;
  const u = new URL(withScheme);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`unsupported scheme in ${raw}`);
  let p = u.pathname.replace(/\/+$/, '');
  if (!overridePath) p = p.endsWith('/v2') ? p : `${p}/v2`;
  return `${u.protocol}//${u.host}${p}`;
}

async function loadTls(dir: string, entry: any): Promise<Pick<RegistryEndpoint, 'ca' | 'client'>> {
  const abs = (f: string) => (path.isAbsolute(f) ? f : path.join(dir, f));
  const ca = await Promise.all(asList(entry.ca).map((f) => fsp.readFile(abs(f), 'utf8')));
  const client: { cert: string; key: string }[] = [];
  const rawClient = entry.client;
  const pairs: unknown[] = rawClient === undefined ? [] : typeof rawClient === 'string' ? [rawClient] : rawClient;
  for (const p of pairs) {
    // containerd allows "cert", ["cert", "key"], or a list of those.
    const [cert, key] = typeof p === 'string' ? [p, p] : asList(p);
    client.push({ cert: await fsp.readFile(abs(cert), 'utf8'), key: await fsp.readFile(abs(key ?? cert), 'utf8') });
  }
  return { ca, client };
}

/** Docker-style certs.d/<host>/*.crt files (no hosts.toml) are extra CAs for the upstream. */
async function legacyCerts(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return [];
  }
  return Promise.all(names.filter((n) => n.endsWith('.crt')).sort().map((n) => fsp.readFile(path.join(dir, n), 'utf8')));
}

/**
 * The endpoints to try, in order, for a registry domain ('docker.io', 'registry.k8s.io', …).
 * `configDir` holds `certs.d/`.
 */
export async function resolveHosts(configDir: string, domain: string): Promise<RegistryEndpoint[]> {
  const certsDir = path.join(configDir, 'certs.d');
  const upstreamHost = defaultEndpointHost(domain);
  for (const dir of hostDirs(certsDir, domain)) {
    const text = await readIfExists(path.join(dir, 'hosts.toml'));
    if (text === undefined) {
      if (path.basename(dir) === '_default') break;
      const cas = await legacyCerts(dir);
      if (cas.length) return [defaultEndpoint(upstreamHost, cas)];
      continue;
    }
    let doc: any;
    try {
      doc = parseToml(text);
    } catch (e: any) {
      throw invalidArgument(`${path.join(dir, 'hosts.toml')}: ${e.message}`);
    }
    try {
      return await endpointsFromToml(doc, dir, upstreamHost);
    } catch (e: any) {
      throw invalidArgument(`${path.join(dir, 'hosts.toml')}: ${e.message}`);
    }
  }
  return [defaultEndpoint(upstreamHost, [])];
}

function defaultEndpoint(host: string, ca: string[]): RegistryEndpoint {
  return {
    url: `https://${host}/v2`,
    capabilities: new Set(['pull', 'resolve', 'push']),
    skipVerify: false,
    ca,
    client: [],
    headers: {},
    upstream: true,
    httpFallback: LOOPBACK.test(host),
  };
}

async function endpointsFromToml(doc: any, dir: string, upstreamHost: string): Promise<RegistryEndpoint[]> {
  const out: RegistryEndpoint[] = [];
  const hosts = doc.host ?? {};
  for (const [key, entry] of Object.entries<any>(hosts)) {
    const caps = entry.capabilities === undefined ? ['pull', 'resolve', 'push'] : asList(entry.capabilities);
    out.push({
      url: apiUrl(key, entry.override_path === true),
      capabilities: new Set(caps as Capability[]),
      skipVerify: entry.skip_verify === true,
      ...(await loadTls(dir, entry)),
      headers: headersOf(entry.header),
      upstream: false,
      httpFallback: false,
    });
  }
  // `server` is the upstream; in _default it is absent and the upstream is implied.
  const server = typeof doc.server === 'string' ? doc.server : undefined;
  out.push({
    ...defaultEndpoint(upstreamHost, []),
    ...(server ? { url: apiUrl(server, doc.override_path === true), httpFallback: false } : {}),
    ...(await loadTls(dir, doc)),
    capabilities: new Set((doc.capabilities === undefined ? ['pull', 'resolve', 'push'] : asList(doc.capabilities)) as Capability[]),
    skipVerify: doc.skip_verify === true,
    headers: headersOf(doc.header),
  });
  return out;
}

function headersOf(h: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (h && typeof h === 'object') for (const [k, v] of Object.entries(h)) out[k] = asList(v).join(', ');
  return out;
}
