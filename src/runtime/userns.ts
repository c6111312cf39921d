// User namespaces of `hostUsers: false` pods (CRI NamespaceOption.userns_options). A pod asks
// for mode POD with one uid and one gid mapping (kubelet gives each such pod a range of 65536
// ids of its own, container id 0 first); NODE (or no options) means the host's users. The
// mapping is checked once, when the pod is admitted, with a clear error for what is not
// supported (CONTAINER, TARGET, several ranges, a range that leaves container root unmapped);
// containers of the pod must repeat the pod's mapping or leave it out. Backend-neutral: the
// VM backend hands the mapping to the guest (every container gets a user namespace with it,
// its image idmapped), a host backend to its own runtime.
import type { NamespaceOption, PodSandboxConfig } from '../../cri-api/messages';
import { invalidArgument } from '../util/errors';

/** One OCI id mapping range (linux.uidMappings / gidMappings). */
export interface IdRange {
  containerID: number;
  hostID: number;
  size: number;
}

export interface UserNsMapping {
  uids: IdRange[];
  gids: IdRange[];
}

const U32 = 2 ** 32;

function range(what: string, list: Array<{ container_id?: unknown; host_id?: unknown; length?: unknown }> | null | undefined): IdRange {
  if (!list || list.length !== 1) {
    throw invalidArgument(`user namespace: exactly one ${what} mapping is supported, got ${list?.length ?? 0}`);
  }
  const m = list[0];
  const r = { containerID: Number(m.container_id ?? 0), hostID: Number(m.host_id ?? 0), size: Number(m.length ?? 0) };
  for (const [k, v] of Object.entries(r)) {
    if (!Number.isInteger(v) || v < 0 || v >= U32) throw invalidArgument(`user namespace: ${what} mapping ${k} ${v} is not a 32-bit id`);
  }
  if (r.containerID !== 0) throw invalidArgument(`user namespace: the ${what} mapping must start at container id 0 (root must be mapped), got ${r.containerID}`);
  if (r.size < 1 || r.hostID + r.size > U32) throw invalidArgument(`user namespace: ${what} mapping of ${r.size} ids from ${r.hostID} is out of range`);
  return r;
}

/** The mapping a namespace option asks for: undefined for the host's users (no options, NODE). */
export function userNamespaceOf(ns: NamespaceOption | null | undefined): UserNsMapping | undefined {
  const u = ns?.userns_options;
  if (!u) return undefined;
  const mode = typeof u.mode === 'string' ? u.mode : 'POD';
  if (mode === 'NODE') return undefined;
  if (mode !== 'POD') throw invalidArgument(`user namespace mode ${mode} is not supported: use POD (a user namespace for the pod) or NODE (the host's users)`);
  return { uids: [range('uid', u.uids)], gids: [range('gid', u.gids)] };
}

/** The pod's user namespace mapping, checked (INVALID_ARGUMENT for what is not supported). */
export function podUserNamespace(config: PodSandboxConfig): UserNsMapping | undefined {
  return userNamespaceOf(config.linux?.security_context?.namespace_options);
}

export function sameMapping(a: UserNsMapping | undefined, b: UserNsMapping | undefined): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

/**
 * A container's user namespace: the pod's. A container that names one must name the pod's
 * (kubelet repeats the pod's options per container); none named means the pod's.
 */
export function containerUserNamespace(pod: UserNsMapping | undefined, containerNs: NamespaceOption | null | undefined): UserNsMapping | undefined {
  if (!containerNs?.userns_options) return pod;
  const own = userNamespaceOf(containerNs);
  if (!sameMapping(own, pod)) {
    throw invalidArgument(`the container's user namespace (${own ? JSON.stringify(own) : 'the host\'s users'}) differs from its pod's (${pod ? JSON.stringify(pod) : 'the host\'s users'}): a pod has one`);
  }
  return pod;
}
