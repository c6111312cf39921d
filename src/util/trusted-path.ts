// Paths the daemon trusts with something that runs as root (VM templates: a pod's RAM and
// device state): the path and every directory above it must be owned by the daemon's user
// (root), not be a symlink, and not be writable by group or others. An ancestor writable by all
// is accepted only with the sticky bit and root's ownership (/tmp, /dev/shm): there nobody else
// can rename or replace what root put in it. Anything else is refused, so that a directory an
// unprivileged user prepared (or could still change) never feeds a VM.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

export class UntrustedPathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UntrustedPathError';
  }
}

const uid = () => process.getuid?.() ?? 0;

/** Checks one existing entry (not following a symlink); `kind` is what it must be. */
export function checkTrustedEntry(p: string, kind: 'dir' | 'file', ancestor = false): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch (err) {
    throw new UntrustedPathError(`${p}: ${(err as NodeJS.ErrnoException).code ?? 'cannot stat'}`);
  }
  if (st.isSymbolicLink()) throw new UntrustedPathError(`${p} is a symlink`);
  if (kind === 'dir' ? !st.isDirectory() : !st.isFile()) throw new UntrustedPathError(`${p} is not a ${kind === 'dir' ? 'directory' : 'regular file'}`);
  const owner = ancestor ? [0, uid()] : [uid()];
  if (!owner.includes(st.uid)) throw new UntrustedPathError(`${p} is owned by uid ${st.uid}, not ${uid()}`);
  const sharedSticky = ancestor && st.uid === 0 && (st.mode & 0o1000) !== 0;
  if (st.mode & 0o022 && !sharedSticky) throw new UntrustedPathError(`${p} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)})`);
}

/** Checks `dir` and every directory above it. */
export function checkTrustedDir(dir: string): void {
  const abs = path.resolve(dir);
  const parts = abs.split('/').filter(Boolean);
  checkTrustedEntry('/', 'dir', true);
  for (let i = 1; i <= parts.length; i++) checkTrustedEntry('/' + parts.slice(0, i).join('/'), 'dir', i < parts.length);
}

/**
 * Makes `dir` exist as a trusted directory: missing levels are created one at a time (mode
 * 0700; never `mkdir -p`, which accepts whatever already exists), then the whole chain is
 * checked. Throws UntrustedPathError when something on the way is not trusted.
 */
export async function ensureTrustedDir(dir: string): Promise<void> {
  const abs = path.resolve(dir);
  const parts = abs.split('/').filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    const p = '/' + parts.slice(0, i).join('/');
    try {
      await fsp.mkdir(p, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  checkTrustedDir(abs);
}
