// Image references the Docker/containerd way: `busybox` is `docker.io/library/busybox:latest`.
// The grammar follows github.com/distribution/reference (domain, path components, tag,
// digest) so that names we store match what kubelet and crictl print for containerd.
import { invalidArgument } from '../util/errors';

export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_ENDPOINT = 'registry-1.docker.io';

const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
// A domain is dotted components with an optional port, or a bracketed IPv6 address.
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:.]+\\])(?::[0-9]+)?$`);
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const NAME_MAX = 255;

export interface Reference {
  domain: string;   // 'docker.io', 'registry.k8s.io', '127.0.0.1:5000'
  path: string;     // 'library/busybox', 'e2e-test-images/busybox'
  tag?: string;     // set when the reference names a tag (never together with digest)
  digest?: string;  // 'sha256:…' when pulled by digest
}

/** 'docker.io/library/busybox' */
export function repoName(r: Reference): string {
  return `${r.domain}/${r.path}`;
}

/** The canonical string: 'name:tag' or 'name@sha256:…'. */
export function formatReference(r: Reference): string {
  if (r.digest) return `${repoName(r)}@${r.digest}`;
  return `${repoName(r)}:${r.tag ?? 'latest'}`;
}

/** The registry host to talk to for a domain: Docker Hub's API lives at registry-1.docker.io. */
export function defaultEndpointHost(domain: string): string {
  return domain === DOCKER_HUB ? DOCKER_HUB_ENDPOINT : domain;
}

export function isDigest(s: string): boolean {
  return DIGEST.test(s);
}

/**
 * Parses and normalizes a reference. A reference with both tag and digest keeps only the
 * digest (as containerd does): the digest is what is pulled, and the tag might have moved.
 * A missing tag means 'latest'. Throws INVALID_ARGUMENT for anything malformed.
 */
export function parseReference(input: string): Reference {
  const bad = (why: string) => invalidArgument(`invalid image reference ${JSON.stringify(input)}: ${why}`);
  if (typeof input !== 'string' || input.length === 0) throw bad('empty');
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad('digest must be sha256:<64 lowercase hex>');
  }
  // A tag is after the last ':' that is past the last '/', so 'host:5000/x' has no tag.
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad('invalid tag');
  }
  if (rest.length === 0) throw bad('empty name');
  let domain = DOCKER_HUB;
  let path = rest;
  const slash = rest.indexOf('/');
  const first = slash < 0 ? '' : rest.slice(0, slash);
  // The first component is a domain only if it looks like one: dotted, with a port, or localhost.
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase())) {
    domain = first;
    path = rest.slice(slash + 1);
    if (!DOMAIN.test(domain)) throw bad('invalid registry host');
  }
  if (domain === 'index.docker.io') domain = DOCKER_HUB;
  if (/^[a-f0-9]{64}$/.test(path)) throw bad('a 64-hex name is an image id, not a repository');
  if (domain === DOCKER_HUB && !path.includes('/')) path = `library/${path}`;
  const components = path.split('/');
  for (const c of components) if (!PATH_COMPONENT.test(c)) throw bad(`invalid repository name component ${JSON.stringify(c)}`);
  if (domain.length + 1 + path.length > NAME_MAX) throw bad('name too long');
  if (digest) return { domain, path, digest };
  return { domain, path, tag: tag ?? 'latest' };
}

/** Normalizes a reference string, e.g. 'busybox' → 'docker.io/library/busybox:latest'. */
export function normalize(input: string): string {
  return formatReference(parseReference(input));
}
