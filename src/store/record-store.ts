// Durable metadata: one JSON file per record, written atomically (temp file, fsync, rename,
// fsync of the directory) so a crash leaves either the old or the new record, never half.
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
