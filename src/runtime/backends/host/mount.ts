// Mounts for the host backend (image erofs mounts, container overlays, pinned namespace files)
// through the ground floor's libc binding (util/mount.ts), an unmount that tolerates what is
// not mounted, and the mount table read back from /proc/self/mountinfo, which is how leftovers
// of a crashed daemon are found.
import fs from 'node:fs';
import { detach, mount, MS_BIND, MS_SHARED, type SysError } from '../../../util/mount';

export { mount, MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_SHARED, SysError } from '../../../util/mount';

/** Detaches the mount at `target`; one that is not mounted is fine. */
export async function unmount(target: string): Promise<void> {
  try {
    await detach(target);
  } catch (err) {
    if ((err as SysError).code !== 'EINVAL' && (err as SysError).code !== 'ENOENT') throw err;
  }
}

/** Mount points at or under `dir` (from /proc/self/mountinfo), deepest first. */
export function mountsUnder(dir: string, mountinfo = '/proc/self/mountinfo'): string[] {
  const out: string[] = [];
  for (const line of fs.readFileSync(mountinfo, 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    // octal escapes (\040 for a space …) as the kernel writes them
    const point = f[4].replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    if (point === dir || point.startsWith(dir.endsWith('/') ? dir : dir + '/')) out.push(point);
  }
  return out.sort((a, b) => b.split('/').length - a.split('/').length);
}

/**
 * Makes `dir` a shared mount (a bind mount of itself first, as `ip netns` does for /run/netns),
 * so that what is mounted and unmounted under it also reaches the mount namespaces copied from
 * the host's later (a pod VM's QEMU, a container before it pivots): an unmount here then frees
 * the mount everywhere instead of leaving copies behind.
 */
export async function ensureSharedDir(dir: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  if (!isMountPoint(dir)) await mount(dir, dir, null, MS_BIND, null);
  await mount('none', dir, null, MS_SHARED, null);
}

/**
 * Undoes ensureSharedDir when nothing is mounted under `dir` (no pod needs it): unmounts `dir`'s
 * own bind mount (each one, when stacked). Returns false, leaving it, when something is under it.
 */
export async function releaseSharedDir(dir: string): Promise<boolean> {
  for (let i = 0; i < 16; i++) {
    const mounts = mountsUnder(dir);
    if (mounts.some((m) => m !== dir)) return false;
    if (!mounts.length) return true;
    await unmount(dir);
  }
  return !isMountPoint(dir);
}

/** True when `path` is itself a mount point. */
export function isMountPoint(path: string, mountinfo = '/proc/self/mountinfo'): boolean {
  return mountsUnder(path, mountinfo).includes(path);
}
