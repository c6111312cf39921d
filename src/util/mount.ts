// mount(2) and umount2(2) through koffi, loaded on first use, run on koffi's worker threads: no
// process per mount (a `mount` process costs ~10 ms on a busy node) and the event loop never
// waits on the kernel. One binding for the ground floor: network/ renames netns with it, the
// host pod backend mounts images, overlays and pinned namespaces with it.
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

/** Calls a libc function on koffi's worker threads; -1 becomes a SysError with errno's name. */
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

export function mount(source: string, target: string, fstype: string | null, flags: number, data: string | null, what?: string): Promise<void> {
  return call(what ?? `mount ${source} on ${target}${fstype ? ` (${fstype})` : ''}`, load().mount, source, target, fstype, flags, data);
}

/** Detaches the mount at `target` (umount2 with MNT_DETACH); any failure is thrown. */
export function detach(target: string, what = `unmount ${target}`): Promise<void> {
  return call(what, load().umount2, target, MNT_DETACH);
}
