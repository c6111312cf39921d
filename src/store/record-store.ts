// Durable metadata: one JSON file per record, written atomically (temp file, fsync, rename,
// fsync of the directory) so a crash leaves either the old or the new record, never half.
// write() puts a record in place first and on disk while the caller goes on (pending records:
// a daemon crash keeps the page cache, a machine crash takes the pod's processes along).
// A deleted record is never written again: the writes and the delete of one id run one at a
// time (a delete waits for a write on its way, so no temp file or record lands after it), and
// the deleted record object is remembered (weakly: no growth) so that a late save of it, e.g. a
// container's exit recorded after its remove, is a no-op. The trade: a delete waits for the
// id's write in progress (one fsync), and a record must be saved through the object that was
// deleted (a copy of it would write again).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import { ensureDirSync, fsyncDir } from '../util/dirs';
import { KeyedMutex } from '../util/keyed-mutex';

const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class RecordStore<T extends { id: string }> {
  /** one file operation at a time per id */
  private readonly ops = new KeyedMutex();
  /** records deleted: never written again */
  private readonly deleted = new WeakSet<T>();

  constructor(private readonly dir: string) {
    ensureDirSync(dir, 0o700);
  }

  /** Writes the record durably; a record deleted before (or while this waited) stays deleted. */
  async save(rec: T): Promise<void> {
    checkId(rec.id);
    await this.ops.run(rec.id, async () => {
      if (this.deleted.has(rec)) return;
      await writeFileAtomic(this.file(rec.id), JSON.stringify(rec), { fsync: true, mode: 0o600 });
      await fsyncDir(this.dir);
    });
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
    checkId(rec.id);
    const file = this.file(rec.id);
    const written = await this.ops.run(rec.id, async () => {
      if (this.deleted.has(rec)) return false;
      await writeFileAtomic(file, JSON.stringify(rec), { fsync: false, mode: 0o600 });
      return true;
    });
    if (!written) return { durable: Promise.resolve() };
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

  /**
   * Deletes the record's file once a write of it on its way has landed; the record is not written
   * again (a later save or write of it does nothing).
   */
  async delete(rec: T): Promise<void> {
    checkId(rec.id);
    this.deleted.add(rec);
    await this.ops.run(rec.id, async () => {
      await fsp.rm(this.file(rec.id), { force: true });
      await fsyncDir(this.dir);
    });
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

function checkId(id: string): void {
  if (!ID.test(id)) throw new Error(`bad record id ${JSON.stringify(id)}`);
}
