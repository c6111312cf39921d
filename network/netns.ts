// Named network namespaces (`ip netns`), /run/netns/<name>.
import fs from 'node:fs';
import { run } from '../src/runtime/exec-file';

export const NETNS_DIR = '/run/netns';
const NSFS_MAGIC = 0x6e736673;

export function netnsPath(name: string): string {
  return `${NETNS_DIR}/${name}`;
}

/** True when /run/netns/<name> is a mounted network namespace (not a stale file). */
export function netnsExists(name: string): boolean {
  try {
    return Number(fs.statfsSync(netnsPath(name)).type) === NSFS_MAGIC;
  } catch {
    return false;
  }
}

/** Creates an empty named netns (lo still down: pod set-up brings it up with the taps). */
export async function createNetns(name: string): Promise<string> {
  await run('ip', ['netns', 'add', name]);
  return netnsPath(name);
}

/** Deletes the netns; a missing one is fine. Also removes a stale, unmounted file. */
export async function deleteNetns(name: string): Promise<void> {
  if (netnsExists(name)) {
    try {
      await run('ip', ['netns', 'delete', name]);
    } catch (err) {
      if (netnsExists(name)) throw err;
    }
  }
  fs.rmSync(netnsPath(name), { force: true });
}

/** `ip -n <ns> -j <args>` parsed. */
export async function ipJson<T = any>(ns: string, args: string[]): Promise<T> {
  const out = await run('ip', ['-n', ns, '-j', ...args]);
  return (out.trim() ? JSON.parse(out) : []) as T;
}
