// OCI distribution client: resolves a reference to a single-platform (linux/amd64) image
// manifest and streams blobs, trying the configured mirrors then the upstream (hosts.ts).
// Plain HTTP and HTTPS (custom CA, skip_verify, client certs) go through undici agents with
// keep-alive; redirects (blob storage backends) are followed by hand so that credentials are
// never forwarded to another origin.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { PodvisorError, failedPrecondition, notFound, permissionDenied, unauthenticated, unavailable } from '../util/errors';
import type { Logger } from '../util/log';
import { Authorizer, type Credentials } from './auth';
import { exchange, TooManyRedirectsError, type HttpResponse } from './http';
import type { BlobSource } from './layer-fetch';
import { resolveHosts, type Capability, type RegistryEndpoint } from './hosts';
import { type Reference, formatReference, repoName } from './reference';

export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  dockerSchema1Plain: 'application/vnd.docker.distribution.manifest.v1+json',
} as const;

const ACCEPT = [MediaType.ociIndex, MediaType.dockerList, MediaType.ociManifest, MediaType.dockerManifest].join(', ');
const MAX_MANIFEST_BYTES = 4 << 20; // containerd's limit too
const MAX_CONFIG_BYTES = 8 << 20;
const USER_AGENT = 'podvisor/0.1';
const PLATFORM = { os: 'linux', architecture: 'amd64' };

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  urls?: string[];
  annotations?: Record<string, string>;
}

export interface ResolvedImage {
  /** Digest of what the reference names (an index for multi-arch images): the repo digest. */
  topDigest: string;
  topBytes: Buffer;
  /** The linux/amd64 image manifest. */
  manifestDigest: string;
  manifestBytes: Buffer;
  manifest: { mediaType?: string; config: Descriptor; layers: Descriptor[] };
}

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

export function sha256(buf: Buffer): string {
  return `sha256:${createHash('sha256').update(buf).digest('hex')}`;
}

/** Checks a descriptor from untrusted JSON so later code can rely on its shape. */
export function checkDescriptor(d: any, what: string): Descriptor {
  if (!d || typeof d !== 'object' || typeof d.digest !== 'string' || !DIGEST_RE.test(d.digest))
    throw failedPrecondition(`${what}: missing or unsupported digest (only sha256 is supported)`);
  if (!Number.isSafeInteger(d.size) || d.size < 0) throw failedPrecondition(`${what} ${d.digest}: invalid size`);
  return d as Descriptor;
}

export { closeAgents } from './http';

type Response = HttpResponse;

function header(res: Response, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

async function readLimited(body: Readable, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += c.length;
    if (n > limit) {
      body.destroy();
      throw failedPrecondition(`${what} is larger than ${limit} bytes`);
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

/** Distribution error codes from a JSON error body, for messages ('MANIFEST_UNKNOWN'). */
async function errorCodes(res: Response): Promise<string> {
  try {
    const text = (await readLimited(res.body, 64 << 10, 'error body')).toString('utf8');
    const j = JSON.parse(text);
    const codes = (j.errors ?? []).map((e: any) => String(e.code)).filter(Boolean);
    return codes.length ? ` (${codes.join(', ')})` : '';
  } catch {
    return '';
  }
}

function isNetworkError(e: unknown): boolean {
  return !(e instanceof PodvisorError) || e.code === 'unavailable';
}

/**
 * One pull's view of a repository: its endpoints, their auth state, and the requests.
 * Credentials go only to the upstream server (and its token realm), never to mirrors,
 * like containerd's CRI plugin does for per-pull auth.
 */
export class RepositorySession {
  private authorizers = new Map<RegistryEndpoint, Authorizer>();
  private readonly scope: string;
  /** Endpoint that served the manifest: blobs are tried there first. */
  private preferred?: RegistryEndpoint;

  private constructor(
    readonly ref: Reference,
    readonly endpoints: RegistryEndpoint[],
    private readonly creds: Credentials | undefined,
    private readonly logger: Logger,
    readonly signal?: AbortSignal,
  ) {
    this.scope = `repository:${ref.path}:pull`;
  }

  static async open(ref: Reference, configDir: string, creds: Credentials | undefined, logger: Logger, signal?: AbortSignal): Promise<RepositorySession> {
    return new RepositorySession(ref, await resolveHosts(configDir, ref.domain), creds, logger, signal);
  }

  private where(e: RegistryEndpoint): string {
    return `${repoName(this.ref)} via ${e.url.replace(/\/v2$/, '')}`;
  }

  private authorizer(e: RegistryEndpoint): Authorizer {
    let a = this.authorizers.get(e);
    if (!a) {
      const creds = e.upstream ? this.creds : undefined;
      a = new Authorizer(async (url, init) => {
        const res = await this.raw(e, url, init.method, init.headers, init.body);
        const text = (await readLimited(res.body, 1 << 20, 'token response')).toString('utf8');
        return { status: res.status, text };
      }, creds);
      this.authorizers.set(e, a);
    }
    return a;
  }

  /** One HTTP exchange with manual redirects; Authorization is dropped when the origin changes. */
  private async raw(e: RegistryEndpoint, url: string, method: 'GET' | 'HEAD' | 'POST', headers: Record<string, string>, body?: string): Promise<Response> {
    try {
      return await exchange(url, method, { 'user-agent': USER_AGENT, ...headers }, e, this.signal, body);
    } catch (err) {
      if (err instanceof TooManyRedirectsError) throw unavailable(`${this.where(e)}: too many redirects`);
      throw err;
    }
  }

  /** GET an API path with auth; on a 401 answer the challenge once and retry. */
  private async get(e: RegistryEndpoint, apiPath: string, accept?: string): Promise<Response> {
    const auth = this.authorizer(e);
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { ...e.headers };
      if (accept) headers.accept = accept;
      const a = auth.header(this.scope);
      if (a) headers.authorization = a;
      let res: Response;
      try {
        res = await this.raw(e, e.url + apiPath, 'GET', headers);
      } catch (err: any) {
        if (err instanceof PodvisorError) throw err;
        if (this.signal?.aborted) throw unavailable(`${this.where(e)}: pull aborted`);
        // Docker's rule for loopback registries without config: TLS first, then plain HTTP.
        if (e.httpFallback && e.url.startsWith('https://')) {
          this.logger.debug({ endpoint: e.url }, 'TLS failed on a loopback registry, using plain HTTP');
          e.url = e.url.replace(/^https:/, 'http:');
          e.httpFallback = false;
          attempt--;
          continue;
        }
        throw unavailable(`${this.where(e)}: ${err?.code ?? ''} ${err?.message ?? err}`.trim());
      }
      if (res.status === 401 && attempt < 2) {
        res.body.resume();
        if (await auth.answer(header(res, 'www-authenticate'), this.scope, this.where(e))) continue;
      }
      return res;
    }
  }

  private async failure(e: RegistryEndpoint, res: Response, what: string): Promise<PodvisorError> {
    const codes = await errorCodes(res);
    const where = `${this.where(e)}: ${what}`;
    switch (res.status) {
      case 404:
        return notFound(`${where} not found${codes}`);
      case 401:
        return unauthenticated(`${where}: unauthorized${codes} (wrong or missing credentials, or the repository does not exist)`);
      case 403:
        return permissionDenied(`${where}: access denied${codes}`);
      case 429:
        return unavailable(`${where}: rate limited by the registry (HTTP 429)${codes}`);
      default:
        return res.status >= 500 ? unavailable(`${where}: registry error HTTP ${res.status}${codes}`) : failedPrecondition(`${where}: unexpected HTTP ${res.status}${codes}`);
    }
  }

  /**
   * Runs `fn` on each endpoint with the capability until one succeeds. When all fail, the
   * most telling error wins: a registry's answer (not found, auth) over a network failure.
   */
  private async tryEndpoints<T>(cap: Capability, fn: (e: RegistryEndpoint) => Promise<T>): Promise<T> {
    const candidates = this.endpoints.filter((e) => e.capabilities.has(cap));
    if (this.preferred && candidates.includes(this.preferred)) candidates.sort((a, b) => (a === this.preferred ? -1 : b === this.preferred ? 1 : 0));
    if (candidates.length === 0) throw failedPrecondition(`${repoName(this.ref)}: no registry host has the ${cap} capability`);
    const errors: PodvisorError[] = [];
    for (const e of candidates) {
      try {
        const v = await fn(e);
        this.preferred = e;
        return v;
      } catch (err: any) {
        const ce = err instanceof PodvisorError ? err : unavailable(String(err?.message ?? err));
        if (this.signal?.aborted) throw ce;
        errors.push(ce);
        if (candidates.length > 1) this.logger.info({ endpoint: e.url, err: ce }, 'registry host failed, trying the next');
      }
    }
    return Promise.reject(errors.find((x) => !isNetworkError(x)) ?? errors[errors.length - 1]);
  }

  /** Fetches a manifest by tag or digest, verifying its digest. */
  private async fetchManifest(reference: string, cap: Capability): Promise<{ digest: string; bytes: Buffer; mediaType: string }> {
    return this.tryEndpoints(cap, async (e) => {
      const res = await this.get(e, `/${this.ref.path}/manifests/${reference}`, ACCEPT);
      if (res.status !== 200) throw await this.failure(e, res, `manifest ${reference}`);
      const bytes = await readLimited(res.body, MAX_MANIFEST_BYTES, `manifest ${reference}`);
      const digest = sha256(bytes);
      if (reference.startsWith('sha256:') && digest !== reference)
        throw new PodvisorError('data_loss', `${this.where(e)}: manifest ${reference} digest mismatch (got ${digest})`);
      const claimed = header(res, 'docker-content-digest');
      if (claimed && DIGEST_RE.test(claimed) && claimed !== digest)
        throw new PodvisorError('data_loss', `${this.where(e)}: manifest ${reference} digest mismatch (registry says ${claimed}, content is ${digest})`);
      let mediaType = '';
      try {
        mediaType = JSON.parse(bytes.toString('utf8')).mediaType ?? '';
      } catch {
        throw failedPrecondition(`${this.where(e)}: manifest ${reference} is not JSON`);
      }
      if (!mediaType) mediaType = (header(res, 'content-type') ?? '').split(';')[0].trim();
      return { digest, bytes, mediaType };
    });
  }

  /** Resolves the reference to its linux/amd64 image manifest. */
  async resolve(): Promise<ResolvedImage> {
    const byDigest = !!this.ref.digest;
    const top = await this.fetchManifest(this.ref.digest ?? this.ref.tag ?? 'latest', byDigest ? 'pull' : 'resolve');
    let cur = top;
    for (let depth = 0; depth < 3; depth++) {
      const doc = JSON.parse(cur.bytes.toString('utf8'));
      const isIndex = cur.mediaType === MediaType.ociIndex || cur.mediaType === MediaType.dockerList || (!cur.mediaType && Array.isArray(doc.manifests));
      if (isIndex) {
        const pick = pickPlatform(doc.manifests ?? []);
        if (!pick) throw notFound(`${formatReference(this.ref)}: no ${PLATFORM.os}/${PLATFORM.architecture} image in the index`);
        cur = await this.fetchManifest(checkDescriptor(pick, 'index entry').digest, 'pull');
        continue;
      }
      if (cur.mediaType === MediaType.dockerSchema1 || cur.mediaType === MediaType.dockerSchema1Plain || doc.schemaVersion === 1)
        throw failedPrecondition(`${formatReference(this.ref)}: Docker schema 1 manifests are not supported`);
      if (!doc.config || !Array.isArray(doc.layers)) throw failedPrecondition(`${formatReference(this.ref)}: unsupported manifest type ${cur.mediaType || '(none)'}`);
      checkDescriptor(doc.config, 'config');
      doc.layers.forEach((l: any, i: number) => checkDescriptor(l, `layer ${i}`));
      return { topDigest: top.digest, topBytes: top.bytes, manifestDigest: cur.digest, manifestBytes: cur.bytes, manifest: doc };
    }
    throw failedPrecondition(`${formatReference(this.ref)}: indexes nested too deep`);
  }

  /** Opens a blob's body; the caller verifies digest and size. */
  async openBlob(desc: Descriptor): Promise<{ body: Readable; length?: number }> {
    return this.tryEndpoints('pull', async (e) => {
      const res = await this.get(e, `/${this.ref.path}/blobs/${desc.digest}`);
      if (res.status !== 200) throw await this.failure(e, res, `blob ${desc.digest}`);
      const len = Number(header(res, 'content-length'));
      return { body: res.body, length: Number.isFinite(len) ? len : undefined };
    });
  }

  /**
   * The request for a blob at the endpoint that served the manifest, with the auth it holds
   * now: for a layer worker to download it (layer-fetch.ts). Undefined before any endpoint
   * answered. Anything but a 200 there sends the blob back to openBlob() (fail-over, auth).
   */
  blobSource(desc: Descriptor): BlobSource | undefined {
    const e = this.preferred;
    if (!e || !e.capabilities.has('pull')) return undefined;
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...e.headers };
    const a = this.authorizer(e).header(this.scope);
    if (a) headers.authorization = a;
    return { url: `${e.url}/${this.ref.path}/blobs/${desc.digest}`, headers, tls: { skipVerify: e.skipVerify, ca: e.ca, client: e.client } };
  }

  /** Fetches a small blob (the config) into memory, verified. */
  async fetchSmallBlob(desc: Descriptor): Promise<Buffer> {
    if (desc.size > MAX_CONFIG_BYTES) throw failedPrecondition(`blob ${desc.digest} too large (${desc.size} bytes)`);
    const { body } = await this.openBlob(desc);
    const bytes = await readLimited(body, desc.size, `blob ${desc.digest}`).catch((e) => {
      throw e instanceof PodvisorError && e.code === 'failed_precondition' ? new PodvisorError('data_loss', `blob ${desc.digest} is larger than its descriptor says`) : e;
    });
    if (bytes.length !== desc.size) throw new PodvisorError('data_loss', `blob ${desc.digest}: size mismatch (expected ${desc.size}, got ${bytes.length})`);
    const got = sha256(bytes);
    if (got !== desc.digest) throw new PodvisorError('data_loss', `blob ${desc.digest}: digest mismatch (got ${got})`);
    return bytes;
  }
}

/** The index entry for linux/amd64 (variant-less or v1 preferred), skipping attestations. */
export function pickPlatform(entries: Descriptor[]): Descriptor | undefined {
  const ok = entries.filter((d) => d.platform?.os === PLATFORM.os && d.platform?.architecture === PLATFORM.architecture);
  return ok.find((d) => !d.platform?.variant || d.platform.variant === 'v1') ?? ok[0];
}
