// Durable metadata: one JSON file per record, written atomically (temp file, fsync, rename,
// fsync of the directory) so a crash leaves either the old or the new record, never half.
// write() puts a record in place first and on disk while the caller goes on (pending records:
// a daemon crash keeps the page cache, a machine crash takes the pod's processes along).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import { ensureDirSync } from '../util/dirs';

const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class RecordStore<T extends { id: string }> {
  constructor(private readonly dir: string) {
    ensureDirSync(dir, 0o700);
  }

  async save(rec: T): Promise<void> {
    if (!ID.test(rec.id)) throw new Error(`bad record id ${JSON.stringify(rec.id)}`);
    await writeFileAtomic(this.file(rec.id), JSON.stringify(rec), { fsync: true, mode: 0o600 });
    await fsyncDir(this.dir);
  }

  /**
   * Writes the record as save() does, but returns once it is in place in the file system, before
   * it is on disk: a crash of the daemon leaves it (the page cache keeps it); `durable` settles
   * once it is on disk, so that a crash of the machine leaves it too. For a pending record that
   * must come before side effects a machine crash takes with it anyway (processes, VMs, netns,
   * mounts): they start while the record goes to disk, and `durable` is awaited before the
   * record's next write. Attach a handler to `durable` at once (it may reject, e.g. EIO).
   */
  async write(rec: T): Promise<{ durable: Promise<void> }> {
    if (!ID.test(rec.id)) throw new Error(`bad record id ${JSON.stringify(rec.id)}`);
    const file = this.file(rec.id);
    await writeFileAtomic(file, JSON.stringify(rec), { fsync: false, mode: 0o600 });
    const durable = (async () => {
      // replaced or deleted meanwhile: the newer write or the delete syncs itself
      const fh = await fsp.open(file, 'r').catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (fh) {
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
      }
      await fsyncDir(this.dir);
    })();
    return { durable };
  }

  async delete(id: string): Promise<void> {
    await fsp.rm(this.file(id), { force: true });
    await fsyncDir(this.dir);
  }

  /** Every readable record; unreadable ones are returned by name so the caller can log them. */
  async loadAll(): Promise<{ records: T[]; broken: string[] }> {
    const records: T[] = [];
    const broken: string[] = [];
    for (const name of await fsp.readdir(this.dir)) {
      if (!name.endsWith('.json')) {
        // leftovers of an interrupted atomic write
        if (name.includes('.json.')) await fsp.rm(path.join(this.dir, name), { force: true });
        continue;
      }
      try {
        records.push(JSON.parse(await fsp.readFile(path.join(this.dir, name), 'utf8')) as T);
      } catch {
        broken.push(name);
      }
    }
    return { records, broken };
  }

  private file(id: string): string {
    return path.join(this.dir, `${id}.json`);
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
