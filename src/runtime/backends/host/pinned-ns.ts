// A host pod's own namespaces, without a pause container: `podvisor-launch pinns` (launcher/
// src/pinns.rs) creates the network (unless the pod uses the host's), IPC and UTS namespaces the
// pod asks for, sets the hostname and the pod's namespaced sysctls in them, mounts the pod's
// /dev/shm, and pins each namespace as a bind-mounted file under the pod's directory; where the
// pod shares one PID namespace it also starts the namespace's init (PID 1 that only reaps).
// One process per pod, ~5 ms. Unpinning unmounts the files and stops the init.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { invalidArgument } from '../../../util/errors';
import { run } from '../../../util/exec-file';
import { mountsUnder, unmount } from './mount';

export interface PinnedNamespaces {
  /** the pod's network namespace file; absent for a host-network pod */
  net?: string;
  ipc?: string;
  uts?: string;
  /** the pod's /dev/shm (a tmpfs); absent with host IPC */
  shm?: string;
  /** PID 1 of the pod's shared PID namespace, and its start time (clock ticks since boot) */
  init?: { pid: number; startTime: number };
}

export interface PinRequest {
  dir: string;
  net: boolean;
  ipc: boolean;
  /** the pod's hostname when it gets a UTS namespace of its own */
  hostname?: string;
  sysctls: Record<string, string>;
  shmBytes?: number;
  pid: boolean;
}

/** The namespace a pod sysctl belongs to (those runc lets a pod set), or undefined. */
export function sysctlNamespace(key: string): 'net' | 'ipc' | 'uts' | undefined {
  if (['kernel.msgmax', 'kernel.msgmnb', 'kernel.msgmni', 'kernel.sem', 'kernel.shmall', 'kernel.shmmax', 'kernel.shmmni', 'kernel.shm_rmid_forced'].includes(key) || key.startsWith('fs.mqueue.')) return 'ipc';
  if (key.startsWith('net.')) return 'net';
  if (key === 'kernel.hostname' || key === 'kernel.domainname') return 'uts';
  return undefined;
}

/**
 * Checks the pod's sysctls: each must belong to a namespace the pod has of its own (a host pod
 * must never change the host's settings). INVALID_ARGUMENT otherwise.
 */
export function checkSysctls(sysctls: Record<string, string>, own: { net: boolean; ipc: boolean; uts: boolean }): void {
  for (const [k, v] of Object.entries(sysctls)) {
    const ns = sysctlNamespace(k);
    if (!ns) throw invalidArgument(`sysctl ${k} is not namespaced: a pod may not set it`);
    if (!own[ns]) throw invalidArgument(`sysctl ${k} would change the host's ${ns} namespace (the pod shares it)`);
    if (!/^[A-Za-z0-9._-]+$/.test(k) || typeof v !== 'string' || v.length > 4096 || v.includes('\0')) throw invalidArgument(`sysctl ${k}: bad name or value`);
  }
}

/**
 * A live process's start time in clock ticks since boot (/proc/<pid>/stat field 22); undefined
 * when there is no such process or it has exited (a zombie).
 */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name may hold spaces and parentheses: fields count from the last ')'
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
    return Number(fields[19]);
  } catch {
    return undefined;
  }
}

/** True while the pod's PID namespace init is the process it was (not a reused pid). */
export function initAlive(init: { pid: number; startTime: number }): boolean {
  return processStartTime(init.pid) === init.startTime;
}

export async function pin(launcher: string, r: PinRequest): Promise<PinnedNamespaces> {
  const args = ['pinns', '--dir', r.dir];
  if (r.net) args.push('--net');
  if (r.ipc) args.push('--ipc');
  if (r.hostname !== undefined) args.push('--uts', r.hostname);
  for (const [k, v] of Object.entries(r.sysctls)) args.push('--sysctl', `${k}=${v}`);
  if (r.shmBytes) args.push('--shm-size', String(r.shmBytes));
  if (r.pid) args.push('--pid');
  await fsp.mkdir(r.dir, { recursive: true, mode: 0o700 });
  const out = JSON.parse((await run(launcher, args)).trim());
  const ns: PinnedNamespaces = { net: out.net, ipc: out.ipc, uts: out.uts, shm: out.shm };
  if (Number.isInteger(out.init_pid)) {
    const startTime = processStartTime(out.init_pid);
    if (startTime === undefined) throw new Error(`the pod's PID namespace init (${out.init_pid}) is gone`);
    ns.init = { pid: out.init_pid, startTime };
  }
  return ns;
}

/** Stops the init, unmounts everything pinned under `dir` and removes it. Idempotent. */
export async function unpin(dir: string, ns: PinnedNamespaces | undefined): Promise<void> {
  if (ns?.init && initAlive(ns.init)) {
    try {
      process.kill(ns.init.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    // a signal is delivered asynchronously: the namespace is gone once its init is
    for (let i = 0; i < 200 && initAlive(ns.init); i++) await new Promise((r) => setTimeout(r, 10));
  }
  for (const m of mountsUnder(dir)) await unmount(m);
  await fsp.rm(dir, { recursive: true, force: true });
}

/** The pid namespace file of the pod's init, for its containers' specs. */
export function pidNamespaceOf(ns: PinnedNamespaces): string | undefined {
  return ns.init ? path.join('/proc', String(ns.init.pid), 'ns', 'pid') : undefined;
}
