// Memory-backed emptyDir volumes (`emptyDir: {medium: Memory}`): kubelet mounts a tmpfs at
// <kubelet root>/pods/<pod uid>/volumes/kubernetes.io~empty-dir/<name>, sized from sizeLimit (or
// the pod's memory limit, or node allocatable), and names that directory, or a subPath bind of a
// directory inside it (…/volume-subpaths/…), as a CRI mount's host_path. A VM pod does not share
// it through 9p: the pod gets a tmpfs of its own in guest memory, of the same size, owner and
// mode, shared by every container that mounts the volume (as Kata does). So the size a container
// sees is exact, the pages are the pod VM's (its cgroup pays for them, as kubelet's memory
// accounting of such volumes expects) and I/O stays in the guest.
//
// The trade: the host directory stays empty. kubelet's `du` of it (volume stats, the emptyDir
// sizeLimit eviction) reads ~0, and the host cannot see the files; the size limit is enforced by
// the guest tmpfs instead (ENOSPC at exactly sizeLimit), and the usage is pod memory.
//
// Recognised by the mount table, not by the path alone: the host path's mount must be a tmpfs,
// and that tmpfs (same device) must be mounted at this pod's own emptyDir path. Other tmpfs host
// paths (secrets, projected volumes: kubelet writes their contents) stay 9p binds.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';

export interface MountEntry {
  /** major:minor of the filesystem (one per tmpfs instance) */
  dev: string;
  /** the path inside the filesystem that is mounted (a bind of a subdirectory: not "/") */
  root: string;
  mountPoint: string;
  fstype: string;
}

/** What a pod needs to make the volume: a name, and kubelet's tmpfs's size, mode and owner. */
export interface MemoryVolumeSpec {
  /** the pod's name for the volume (an agent id) */
  name: string;
  sizeBytes: number;
  mode: number;
  uid: number;
  gid: number;
}

export interface MemoryVolume extends MemoryVolumeSpec {
  /** kubelet's tmpfs mount point on the host */
  hostRoot: string;
  /** the directory inside the volume the container mounts ('' = the whole volume) */
  subPath: string;
}

/** mountinfo's octal escapes (\040 for a space …). */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** /proc/self/mountinfo lines: id parent maj:min root mountpoint opts [optional…] - fstype source super */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 10 || sep < 0) continue;
    out.push({ dev: f[2], root: unescape(f[3]), mountPoint: unescape(f[4]), fstype: f[sep + 1] });
  }
  return out;
}

const EMPTY_DIR = /\/pods\/([^/]+)\/volumes\/kubernetes\.io~empty-dir\/([^/]+)$/;

/**
 * The memory emptyDir of pod `podUid` that `hostPath` (a real path, symlinks resolved) names, and
 * the sub path inside it; undefined for anything else.
 */
export function findMemoryVolume(hostPath: string, podUid: string, mounts: MountEntry[]): { hostRoot: string; subPath: string } | undefined {
  // the mount holding hostPath: the longest mount point above it, the last (topmost) of equals
  let holder: MountEntry | undefined;
  for (const m of mounts) {
    const inside = hostPath === m.mountPoint || hostPath.startsWith(m.mountPoint === '/' ? '/' : `${m.mountPoint}/`);
    if (inside && (!holder || m.mountPoint.length >= holder.mountPoint.length)) holder = m;
  }
  if (!holder || holder.fstype !== 'tmpfs') return undefined;
  const volume = mounts.filter((m) => m.dev === holder!.dev && m.root === '/' && m.fstype === 'tmpfs').reverse()
    .find((m) => EMPTY_DIR.exec(m.mountPoint)?.[1] === podUid);
  if (!volume) return undefined;
  const sub = path.posix.join(holder.root, path.posix.relative(holder.mountPoint, hostPath)).replace(/^\/+/, '');
  if (sub.split('/').includes('..')) return undefined;
  return { hostRoot: volume.mountPoint, subPath: sub === '.' ? '' : sub };
}

/** The guest's name for a volume: stable per host mount point, a valid agent id. */
export function guestName(hostRoot: string): string {
  const m = EMPTY_DIR.exec(hostRoot);
  const readable = (m?.[2] ?? 'volume').replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40);
  return `ed-${crypto.createHash('sha256').update(hostRoot).digest('hex').slice(0, 16)}-${readable}`;
}

/** Reads the host's mount table and the tmpfs's size, owner and mode. */
export async function memoryVolume(hostPath: string, podUid: string): Promise<MemoryVolume | undefined> {
  if (!podUid) return undefined;
  const real = await fsp.realpath(hostPath).catch(() => undefined);
  if (!real) return undefined;
  const found = findMemoryVolume(real, podUid, parseMountinfo(await fsp.readFile('/proc/self/mountinfo', 'utf8')));
  if (!found) return undefined;
  const [fs, st] = await Promise.all([fsp.statfs(found.hostRoot), fsp.stat(found.hostRoot)]);
  return {
    name: guestName(found.hostRoot),
    hostRoot: found.hostRoot,
    subPath: found.subPath,
    sizeBytes: fs.blocks * fs.bsize,
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
  };
}
