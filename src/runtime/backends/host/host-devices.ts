// The host's device nodes, which a privileged host container gets in its /dev (as runc's and
// containerd's privileged containers do: HostDevices). Symlinks and the per-container
// directories (pts, shm, mqueue, fd) are skipped; the walk is bounded in depth and count.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { HostDevice } from '../../oci-spec';

const SKIP = new Set(['/dev/pts', '/dev/shm', '/dev/mqueue', '/dev/fd', '/dev/.lxc', '/dev/.lxd-mounts', '/dev/console']);
const MAX_DEVICES = 4096;

export async function hostDevices(root = '/dev'): Promise<HostDevice[]> {
  const out: HostDevice[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (depth > 8 || out.length >= MAX_DEVICES) return;
    let entries;
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (SKIP.has(p) || out.length >= MAX_DEVICES) continue;
      if (e.isDirectory()) await walk(p, depth + 1);
      else if (e.isCharacterDevice() || e.isBlockDevice()) {
        const st = await fsp.lstat(p, { bigint: false }).catch(() => undefined);
        if (!st) continue;
        // glibc's dev_t layout: major in bits 8-19 and 44-63, minor in bits 0-7 and 20-43
        const rdev = BigInt(st.rdev);
        const major = Number(((rdev & 0xfff00n) >> 8n) | ((rdev & 0xfffff00000000000n) >> 32n));
        const minor = Number((rdev & 0xffn) | ((rdev & 0xffffff00000n) >> 12n));
        out.push({ path: p, type: e.isBlockDevice() ? 'b' : 'c', major, minor, fileMode: st.mode & 0o7777, uid: st.uid, gid: st.gid });
      }
    }
  };
  await walk(root, 0);
  return out;
}
