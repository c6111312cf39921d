// Registry authentication: anonymous, Basic, and the Bearer token flow of the distribution
// spec (WWW-Authenticate: Bearer realm=…,service=…,scope=…), fed by the CRI AuthConfig.
// Secrets live only in this module's closures and request headers: never in log lines or
// error messages (errors name the realm/host and the HTTP status, nothing else).
import { PodvisorError, unauthenticated, permissionDenied, unavailable } from '../util/errors';

/** CRI v1 AuthConfig (field names as in the proto). */
export interface AuthConfig {
  username?: string;
  password?: string;
  auth?: string;
  server_address?: string;
  identity_token?: string;
  registry_token?: string;
}

export interface Credentials {
  username?: string;
  password?: string;
  /** OAuth2 refresh token (docker login with an identity provider). */
  identityToken?: string;
  /** A bearer token to send as is. */
  registryToken?: string;
}

/** The credentials an AuthConfig carries, or undefined for an anonymous pull. */
export function credentialsFrom(a?: AuthConfig | null): Credentials | undefined {
  if (!a) return undefined;
  const c: Credentials = {};
  if (a.username) c.username = a.username;
  if (a.password) c.password = a.password;
  if (a.auth && !c.username) {
    // `auth` is base64("user:password"); the password may itself contain ':'.
    const decoded = Buffer.from(a.auth, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i > 0) {
      c.username = decoded.slice(0, i);
      c.password = decoded.slice(i + 1);
    }
  }
  if (a.identity_token) c.identityToken = a.identity_token;
  if (a.registry_token) c.registryToken = a.registry_token;
  return Object.keys(c).length ? c : undefined;
}

export interface Challenge {
  scheme: string; // lowercased: 'bearer' | 'basic'
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header value (RFC 7235: schemes followed by auth-params). */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const skip = () => {
    while (i < header.length && /[\s,]/.test(header[i])) i++;
  };
  const token = () => {
    const start = i;
    while (i < header.length && /[^\s,="]/.test(header[i])) i++;
    return header.slice(start, i);
  };
  while (true) {
    skip();
    if (i >= header.length) break;
    const name = token();
    if (!name) break;
    let j = i;
    while (j < header.length && header[j] === ' ') j++;
    if (header[j] !== '=') {
      out.push({ scheme: name.toLowerCase(), params: {} });
      continue;
    }
    i = j + 1;
    while (i < header.length && header[i] === ' ') i++;
    let value = '';
    if (header[i] === '"') {
      i++;
      while (i < header.length && header[i] !== '"') {
        if (header[i] === '\\' && i + 1 < header.length) i++;
        value += header[i++];
      }
      i++;
    } else {
      value = token();
    }
    const cur = out[out.length - 1];
    if (cur) cur.params[name.toLowerCase()] = value;
  }
  return out;
}

/** The minimal HTTP surface the authorizer needs (implemented by the registry client). */
export type TokenFetch = (
  url: string,
  init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string },
) => Promise<{ status: number; text: string }>;

interface CachedToken {
  header: string;
  expires: number;
}

/**
 * Holds the authorization state of one pull towards one endpoint origin: after a 401 the
 * challenge is answered once, and the resulting header is reused for every later request
 * with the same scope until it expires.
 */
export class Authorizer {
  private cache = new Map<string, CachedToken>();

  constructor(
    private readonly fetchToken: TokenFetch,
    private readonly creds: Credentials | undefined,
  ) {}

  /** The Authorization header to send proactively, if any. */
  header(scope: string): string | undefined {
    if (this.creds?.registryToken) return `Bearer ${this.creds.registryToken}`;
    const t = this.cache.get(scope);
    if (t && t.expires > Date.now()) return t.header;
    return undefined;
  }

  /**
   * Answers a 401 challenge. Returns true when there is a (new) header to retry with; throws
   * UNAUTHENTICATED when the registry wants credentials we do not have or refused ours.
   */
  async answer(wwwAuthenticate: string | undefined, scope: string, where: string): Promise<boolean> {
    const challenges = parseChallenges(wwwAuthenticate ?? '');
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    const basic = challenges.find((c) => c.scheme === 'basic');
    const previous = this.cache.get(scope);
    if (bearer && bearer.params.realm) {
      const header = await this.bearerToken(bearer.params, scope, where);
      if (previous && previous.header === header) return false;
      this.cache.set(scope, { header, expires: Date.now() + this.lastTtl * 1000 });
      return true;
    }
    if (basic) {
      if (!this.creds?.username) throw unauthenticated(`${where}: registry requires credentials (Basic auth)`);
      const header = `Basic ${Buffer.from(`${this.creds.username}:${this.creds.password ?? ''}`).toString('base64')}`;
      if (previous && previous.header === header) return false;
      this.cache.set(scope, { header, expires: Number.MAX_SAFE_INTEGER });
      return true;
    }
    return false;
  }

  private lastTtl = 60;

  private async bearerToken(params: Record<string, string>, scope: string, where: string): Promise<string> {
    const realm = params.realm;
    const service = params.service;
    // Registries may ask for a wider scope in the challenge; ask for both.
    const scopes = [...new Set([scope, ...(params.scope ? params.scope.split(' ') : [])])].filter(Boolean);
    let res: { status: number; text: string };
    const realmName = (() => {
      try {
        const u = new URL(realm);
        return `${u.origin}${u.pathname}`;
      } catch {
        throw unauthenticated(`${where}: bad token realm in challenge`);
      }
    })();
    try {
      if (this.creds?.identityToken) {
        // OAuth2 refresh-token grant (what `docker login` with an identity token does).
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: this.creds.identityToken, client_id: 'podvisor' });
        if (service) form.set('service', service);
        if (scopes.length) form.set('scope', scopes.join(' '));
        res = await this.fetchToken(realm, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: form.toString(),
        });
      } else {
        const u = new URL(realm);
        if (service) u.searchParams.set('service', service);
        for (const s of scopes) u.searchParams.append('scope', s);
        const headers: Record<string, string> = {};
        if (this.creds?.username) {
          u.searchParams.set('account', this.creds.username);
          headers.authorization = `Basic ${Buffer.from(`${this.creds.username}:${this.creds.password ?? ''}`).toString('base64')}`;
        }
        res = await this.fetchToken(u.toString(), { method: 'GET', headers });
      }
    } catch (e: any) {
      if (e instanceof PodvisorError) throw e;
      throw unavailable(`${where}: token server ${realmName} unreachable: ${e?.message ?? e}`);
    }
    if (res.status === 401) throw unauthenticated(`${where}: token server ${realmName} refused the credentials (401)`);
    if (res.status === 403) throw permissionDenied(`${where}: token server ${realmName} denied access (403)`);
    if (res.status < 200 || res.status >= 300) throw unauthenticated(`${where}: token server ${realmName} answered HTTP ${res.status}`);
    let body: any;
    try {
      body = JSON.parse(res.text);
    } catch {
      throw unauthenticated(`${where}: token server ${realmName} sent no JSON`);
    }
    const token = body.token ?? body.access_token;
    if (typeof token !== 'string' || !token) throw unauthenticated(`${where}: token server ${realmName} sent no token`);
    this.lastTtl = typeof body.expires_in === 'number' && body.expires_in > 0 ? Math.max(10, body.expires_in - 5) : 55;
    return `Bearer ${token}`;
  }
}
