// Named network namespaces (`ip netns`), /run/netns/<name>.
import fs from 'node:fs';
import { run, runWithInput } from '../src/util/exec-file';
import { detach, mount, MS_BIND } from '../src/util/mount';

export const NETNS_DIR = '/run/netns';
const NSFS_MAGIC = 0x6e736673;

export function netnsPath(name: string): string {
  return `${NETNS_DIR}/${name}`;
}

/** True when /run/netns/<name> is a mounted network namespace (not a stale file). */
export function netnsExists(name: string): boolean {
  return isNamespaceFile(netnsPath(name));
}

/** True when `file` is a namespace (a pinned nsfs file), not a plain or stale one. */
export function isNamespaceFile(file: string): boolean {
  try {
    return Number(fs.statfsSync(file).type) === NSFS_MAGIC;
  } catch {
    return false;
  }
}

/** Creates an empty named netns (lo still down: pod set-up brings it up with the taps). */
export async function createNetns(name: string): Promise<string> {
  await run('ip', ['netns', 'add', name]);
  return netnsPath(name);
}

/**
 * Gives the netns `from` the name `to` (which must not exist), as `ip netns` names are made: a
 * bind mount of the namespace on /run/netns/<to>; then the old name goes. Processes and open
 * fds in the namespace (a spare VM's taps) do not notice. No process is started: on a busy node
 * this is ~10 ms cheaper than `ip netns add` and moving the links.
 */
export async function renameNetns(from: string, to: string): Promise<void> {
  if (!netnsExists(from)) throw new Error(`netns ${from} does not exist`);
  fs.writeFileSync(netnsPath(to), '', { flag: 'wx', mode: 0 });
  try {
    await mount(netnsPath(from), netnsPath(to), 'none', MS_BIND, null, `bind ${netnsPath(from)} on ${netnsPath(to)}`);
  } catch (err) {
    fs.rmSync(netnsPath(to), { force: true });
    throw err;
  }
  try {
    await detach(netnsPath(from));
    fs.rmSync(netnsPath(from), { force: true });
  } catch {
    await deleteNetns(from); // the namespace lives on under its new name
  }
}

/**
 * Deletes the netns; a missing one is fine. Also removes a stale, unmounted file. What `ip netns
 * delete` does (detach the bind mount, remove the file), without starting a process: the
 * namespace ends with its last reference, and the links in it (taps, the pod's veth end, their
 * qdiscs) with it.
 */
export async function deleteNetns(name: string): Promise<void> {
  if (netnsExists(name)) {
    try {
      await detach(netnsPath(name), `delete netns ${name}`);
    } catch (err) {
      if (netnsExists(name)) throw err;
    }
  }
  fs.rmSync(netnsPath(name), { force: true });
}

/**
 * Several `ip` reads in one process (`ip -n <ns> -j -batch -`): one parsed JSON array per line
 * of `cmds`, in order. A failing command fails them all.
 */
export async function ipJsonBatch(ns: string, cmds: string[]): Promise<any[][]> {
  const out = await runWithInput('ip', ['-n', ns, '-j', '-batch', '-'], cmds.map((c) => `${c}\n`).join(''));
  // each command prints its array on one line
  const arrays = out.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  if (arrays.length !== cmds.length || !arrays.every(Array.isArray)) throw new Error(`ip -batch: ${cmds.length} reads gave ${arrays.length} answers`);
  return arrays;
}

/** `ip -n <ns> -j <args>` parsed. */
export async function ipJson<T = any>(ns: string, args: string[]): Promise<T> {
  const out = await run('ip', ['-n', ns, '-j', ...args]);
  return (out.trim() ? JSON.parse(out) : []) as T;
}
