// Directories the daemon keeps private: `mkdir -p` with a mode only sets the mode of what it
// creates, so a directory that already exists (made by hand, by an older version, under a
// looser umask) would keep whatever mode it has. ensureDir creates the directory if needed and
// then makes its mode exactly the one asked for; it refuses a symlink or a non-directory in its
// place (a link could point the daemon's state anywhere). fsyncDir makes a rename or a new
// file in a directory durable (the stores' atomic writes end with it).
import fs from 'node:fs';
import fsp from 'node:fs/promises';

function check(dir: string, st: fs.Stats): void {
  if (st.isSymbolicLink()) throw new Error(`${dir} is a symlink; refusing to use it`);
  if (!st.isDirectory()) throw new Error(`${dir} exists and is not a directory`);
}

/** Creates `dir` (and missing parents) and sets its own mode to `mode`. */
export async function ensureDir(dir: string, mode: number): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode });
  const st = await fsp.lstat(dir);
  check(dir, st);
  if ((st.mode & 0o7777) !== mode) await fsp.chmod(dir, mode);
}

/** Flushes `dir` itself (its entries: a file renamed or created in it) to disk. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** ensureDir, synchronously (for constructors). */
export function ensureDirSync(dir: string, mode: number): void {
  fs.mkdirSync(dir, { recursive: true, mode });
  const st = fs.lstatSync(dir);
  check(dir, st);
  if ((st.mode & 0o7777) !== mode) fs.chmodSync(dir, mode);
}
