// Registry HTTP that any thread can use (the daemon's main thread and the layer workers,
// which download blobs themselves): undici agents with keep-alive, one per TLS setting and
// thread, and requests that follow redirects by hand so that credentials never reach another
// origin (blob storage backends get the redirect's own signed URL, not our Authorization).
import type { Readable } from 'node:stream';
import { Agent, request, type Dispatcher } from 'undici';

/** What a connection to an endpoint needs (plain data: it is sent to worker threads). */
export interface TlsSettings {
  skipVerify: boolean;
  /** PEM contents of extra CA certificates. */
  ca: string[];
  /** PEM cert/key pairs for TLS client authentication. */
  client: { cert: string; key: string }[];
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
  /** Where the answer came from (after redirects). */
  url: string;
}

export class TooManyRedirectsError extends Error {}

const agents = new Map<string, Agent>();

function agentFor(t: TlsSettings): Agent {
  const key = JSON.stringify([t.skipVerify, t.ca, t.client]);
  let a = agents.get(key);
  if (!a) {
    a = new Agent({
      connect: {
        rejectUnauthorized: !t.skipVerify,
        ...(t.ca.length ? { ca: t.ca } : {}),
        ...(t.client.length ? { cert: t.client[0].cert, key: t.client[0].key } : {}),
      },
      headersTimeout: 60_000,
      bodyTimeout: 120_000, // a stalled blob download fails instead of hanging the pull
      connections: 16,
    });
    agents.set(key, a);
  }
  return a;
}

/** Closes this thread's agents (tests, shutdown, an idle worker). */
export async function closeAgents(): Promise<void> {
  const all = [...agents.values()];
  agents.clear();
  await Promise.all(all.map((a) => a.close().catch(() => undefined)));
}

/** One HTTP exchange, redirects followed by hand; Authorization is dropped when the origin changes. */
export async function exchange(
  url: string,
  method: 'GET' | 'HEAD' | 'POST',
  headers: Record<string, string>,
  tls: TlsSettings,
  signal?: AbortSignal,
  body?: string,
): Promise<HttpResponse> {
  let current = new URL(url);
  const origin = current.origin;
  for (let hop = 0; hop < 6; hop++) {
    const h = { ...headers };
    if (current.origin !== origin) delete h.authorization;
    const res = await request(current, { method, headers: h, body, dispatcher: agentFor(tls) as Dispatcher, signal });
    if ([301, 302, 303, 307, 308].includes(res.statusCode) && res.headers.location) {
      res.body.resume();
      const loc = Array.isArray(res.headers.location) ? res.headers.location[0] : res.headers.location;
      current = new URL(loc, current);
      if (res.statusCode === 303) method = 'GET';
      continue;
    }
    return { status: res.statusCode, headers: res.headers, body: res.body, url: current.toString() };
  }
  throw new TooManyRedirectsError('too many redirects');
}
