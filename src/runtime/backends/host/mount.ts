// mount(2) and umount2(2) for the host backend (image erofs mounts, container overlays,
// pinned namespace files), called through koffi on its worker threads: no process per mount,
// and the event loop never waits on the kernel. Plus the mount table read back from
// /proc/self/mountinfo, which is how leftovers of a crashed daemon are found.
import fs from 'node:fs';
import { promisify } from 'node:util';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AsyncFn = { async: (...args: any[]) => void };
let libc: { koffi: any; mount: AsyncFn; umount2: AsyncFn } | undefined;

function load() {
  if (!libc) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const koffi = require('koffi');
    const so = koffi.load('libc.so.6');
    libc = {
      koffi,
      mount: so.func('mount', 'int', ['str', 'str', 'str', 'ulong', 'str']),
      umount2: so.func('umount2', 'int', ['str', 'int']),
    };
  }
  return libc;
}

/** An error from a system call, with errno's name as `code` (as Node's own errors have). */
export class SysError extends Error {
  constructor(what: string, readonly code: string) {
    super(`${what}: ${code}`);
  }
}

async function call(what: string, fn: AsyncFn, ...args: unknown[]): Promise<void> {
  const c = load();
  let errno = 0;
  const rc = await promisify((cb: (err: Error | null, res: number) => void) => fn.async(...args, (err: Error | null, res: number) => {
    if (res === -1) errno = c.koffi.errno();
    cb(err, res);
  }))();
  if (rc !== 0) {
    const name = Object.entries(c.koffi.os.errno as Record<string, number>).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
    throw new SysError(what, name);
  }
}

export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_BIND = 0x1000;
export const MS_REC = 0x4000;
export const MS_PRIVATE = 1 << 18;
export const MS_SHARED = 1 << 20;
const MNT_DETACH = 2;

export function mount(source: string, target: string, fstype: string | null, flags: number, data: string | null): Promise<void> {
  return call(`mount ${source} on ${target}${fstype ? ` (${fstype})` : ''}`, load().mount, source, target, fstype, flags, data);
}

/** Detaches the mount at `target`; one that is not mounted is fine. */
export async function unmount(target: string): Promise<void> {
  try {
    await call(`unmount ${target}`, load().umount2, target, MNT_DETACH);
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

/** True when `path` is itself a mount point. */
export function isMountPoint(path: string, mountinfo = '/proc/self/mountinfo'): boolean {
  return mountsUnder(path, mountinfo).includes(path);
}
