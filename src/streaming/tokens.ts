// Single-use, short-lived tokens for streaming URLs (as kubelet's streaming server does): the
// CRI call stores the validated request under a random token; the HTTP request that follows
// takes it out again. The cache is bounded: when it is full of live tokens, new requests fail
// with RESOURCE_EXHAUSTED instead of growing memory.
import { randomBytes } from 'node:crypto';
import { resourceExhausted } from '../util/errors';

export interface ExecRequest {
  kind: 'exec';
  containerId: string;
  cmd: string[];
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

export interface AttachRequest {
  kind: 'attach';
  containerId: string;
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

export interface PortForwardRequest {
  kind: 'portforward';
  sandboxId: string;
  ports: number[];
}

export type StreamRequest = ExecRequest | AttachRequest | PortForwardRequest;

export interface TokenCacheOptions {
  /** lifetime of a token, ms (kubelet: one minute) */
  ttlMs?: number;
  /** most live tokens kept at once */
  maxEntries?: number;
  /** clock, for tests */
  now?: () => number;
}

export class TokenCache {
  private readonly entries = new Map<string, { req: StreamRequest; expires: number }>();
  private readonly ttlMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor(opts: TokenCacheOptions = {}) {
    this.ttlMs = opts.ttlMs ?? 60_000;
    this.maxEntries = opts.maxEntries ?? 1000;
    this.now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Stores req and returns its new token; RESOURCE_EXHAUSTED when full of live tokens. */
  insert(req: StreamRequest): string {
    this.evictExpired();
    if (this.entries.size >= this.maxEntries) {
      throw resourceExhausted(`too many pending streaming requests (max ${this.maxEntries})`);
    }
    let token: string;
    do token = randomBytes(16).toString('base64url');
    while (this.entries.has(token));
    this.entries.set(token, { req, expires: this.now() + this.ttlMs });
    return token;
  }

  /** The live request under token, without using it up. */
  peek(token: string): StreamRequest | undefined {
    const e = this.entries.get(token);
    if (!e) return undefined;
    if (e.expires <= this.now()) {
      this.entries.delete(token);
      return undefined;
    }
    return e.req;
  }

  /** Takes the request out: a token works once. */
  consume(token: string): StreamRequest | undefined {
    const req = this.peek(token);
    if (req) this.entries.delete(token);
    return req;
  }

  /** Map keeps insertion order and every token has the same TTL, so expired ones come first. */
  private evictExpired(): void {
    const now = this.now();
    for (const [token, e] of this.entries) {
      if (e.expires > now) break;
      this.entries.delete(token);
    }
  }
}
