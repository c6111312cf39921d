// The user a host container runs as, from its image's /etc/passwd and /etc/group, as the guest
// agent resolves it for VM pods (guest/agent/src/users.rs): a user name becomes uid and gid, a
// bare uid gets its primary gid, and groups that list the user are added. The files are read in
// the container's root file system with every path step confined to it: a symlink that points
// out of the image reads as a missing file, never a host file.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { invalidArgument } from '../../../util/errors';

const MAX_FILE = 4 * 1024 * 1024;

/** Reads `rel` under `root`, resolving symlinks inside `root` (at most 40 of them). */
export async function readInRoot(root: string, rel: string): Promise<string | undefined> {
  const parts = rel.split('/').filter(Boolean);
  const done: string[] = [];
  let links = 0;
  while (parts.length) {
    const part = parts.shift()!;
    if (part === '.') continue;
    if (part === '..') {
      done.pop();
      continue;
    }
    const p = path.join(root, ...done, part);
    let st;
    try {
      st = await fsp.lstat(p);
    } catch {
      return undefined;
    }
    if (st.isSymbolicLink()) {
      if (++links > 40) return undefined;
      const target = await fsp.readlink(p);
      if (target.startsWith('/')) done.length = 0;
      parts.unshift(...target.split('/').filter(Boolean));
      continue;
    }
    done.push(part);
  }
  const file = path.join(root, ...done);
  try {
    const st = await fsp.stat(file);
    if (!st.isFile() || st.size > MAX_FILE) return undefined;
    return await fsp.readFile(file, 'utf8');
  } catch {
    return undefined;
  }
}

interface Passwd {
  name: string;
  uid: number;
  gid: number;
}

function parsePasswd(text: string | undefined): Passwd[] {
  return (text ?? '').split('\n').flatMap((l) => {
    const f = l.split(':');
    if (f.length < 4 || !/^\d+$/.test(f[2]) || !/^\d+$/.test(f[3])) return [];
    return [{ name: f[0], uid: Number(f[2]), gid: Number(f[3]) }];
  });
}

function groupsOf(groupText: string | undefined, name: string, primary: number): number[] {
  return (groupText ?? '').split('\n').flatMap((l) => {
    const f = l.split(':');
    if (f.length < 4 || !/^\d+$/.test(f[2])) return [];
    const gid = Number(f[2]);
    return gid !== primary && f[3].split(',').some((m) => m.trim() === name) ? [gid] : [];
  });
}

/**
 * Fills spec.process.user from the image: `username` (when the CRI or image named a user rather
 * than a uid) or the uid's own entry gives the uid, the primary gid unless `gidGiven` (CRI
 * run_as_group or a group in the image's User), and the groups that list the user.
 * INVALID_ARGUMENT when a named user is not in the image.
 */
export async function resolveUser(spec: any, username: string | null, gidGiven: boolean, rootfs: string): Promise<void> {
  const user = (spec.process.user ??= { uid: 0, gid: 0 });
  const extra = new Set<number>((user.additionalGids ?? []).map(Number));
  const [passwdText, groupText] = await Promise.all([readInRoot(rootfs, 'etc/passwd'), readInRoot(rootfs, 'etc/group')]);
  const users = parsePasswd(passwdText);
  let u: Passwd | undefined;
  if (username) {
    if (username.length > 256 || /[:\n\0]/.test(username)) throw invalidArgument(`invalid user name ${JSON.stringify(username)}`);
    u = users.find((x) => x.name === username);
    if (!u) throw invalidArgument(`user ${JSON.stringify(username)} not found in the image's /etc/passwd`);
    user.uid = u.uid;
  } else {
    u = users.find((x) => x.uid === Number(user.uid ?? 0));
  }
  if (u) {
    if (!gidGiven) user.gid = u.gid;
    for (const g of groupsOf(groupText, u.name, u.gid)) extra.add(g);
  }
  if (extra.size) user.additionalGids = [...extra].sort((a, b) => a - b);
}
