// RecordStore.write: a record is in place when write() returns (what a killed daemon's successor
// reads), and its `durable` settles also when the record was replaced or deleted meanwhile.
// RecordStore.delete: a deleted record is never written again, also by a save that was on its
// way when the delete came (the crash matrix saw a container's temp file beside its removal).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RecordStore } from '../../src/store/record-store';

interface Rec { id: string; n: number }

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-records-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

test('write: the record is in place at once and durable afterwards', async () => {
  const store = new RecordStore<Rec>(dir);
  const { durable } = await store.write({ id: 'a', n: 1 });
  expect(JSON.parse(fs.readFileSync(path.join(dir, 'a.json'), 'utf8'))).toEqual({ id: 'a', n: 1 });
  await expect(durable).resolves.toBeUndefined();
  expect((await store.loadAll()).records).toEqual([{ id: 'a', n: 1 }]);
  expect(fs.readdirSync(dir)).toEqual(['a.json']); // no temp file left
});

test('write: durable settles when a later save or a delete came first', async () => {
  const store = new RecordStore<Rec>(dir);
  const first = await store.write({ id: 'b', n: 1 });
  await store.save({ id: 'b', n: 2 });
  await expect(first.durable).resolves.toBeUndefined();
  expect((await store.loadAll()).records).toEqual([{ id: 'b', n: 2 }]);
  const rec = { id: 'b', n: 3 };
  const second = await store.write(rec);
  await store.delete(rec);
  await expect(second.durable).resolves.toBeUndefined();
  expect((await store.loadAll()).records).toEqual([]);
});

test('write: a bad id is refused before anything is written', async () => {
  const store = new RecordStore<Rec>(dir);
  await expect(store.write({ id: '../x', n: 1 })).rejects.toThrow(/bad record id/);
  expect(fs.readdirSync(dir)).toEqual([]);
});

test('delete: a save on its way lands first and is deleted; no temp file is left when delete returns', async () => {
  const store = new RecordStore<Rec>(dir);
  const rec = { id: 'c', n: 1 };
  await store.save(rec);
  rec.n = 2;
  // the order of an exit's record write and a remove of the container: the write starts first
  const saving = store.save(rec);
  await store.delete(rec);
  expect(fs.readdirSync(dir)).toEqual([]);
  await saving;
  expect(fs.readdirSync(dir)).toEqual([]);
});

test('delete: a deleted record is never written again (save and write are no-ops)', async () => {
  const store = new RecordStore<Rec>(dir);
  const rec = { id: 'd', n: 1 };
  await store.save(rec);
  await store.delete(rec);
  rec.n = 2;
  await store.save(rec);
  const { durable } = await store.write(rec);
  await durable;
  expect(fs.readdirSync(dir)).toEqual([]);
  // another record of the same id (a new object) is written as usual
  await store.save({ id: 'd', n: 3 });
  expect((await store.loadAll()).records).toEqual([{ id: 'd', n: 3 }]);
});

test('delete: a bad id is refused, nothing outside the directory is touched', async () => {
  const store = new RecordStore<Rec>(path.join(dir, 'records'));
  fs.writeFileSync(path.join(dir, 'x.json'), '{}');
  await expect(store.delete({ id: '../x', n: 0 })).rejects.toThrow(/bad record id/);
  expect(fs.existsSync(path.join(dir, 'x.json'))).toBe(true);
});

test('loadAll: the temp file of an interrupted atomic write is removed, records are kept', async () => {
  const store = new RecordStore<Rec>(dir);
  await store.save({ id: 'e', n: 1 });
  fs.writeFileSync(path.join(dir, 'e.json.2874512673'), '{"id":"e","n":'); // cut short by a crash
  fs.writeFileSync(path.join(dir, 'f.json.11'), '{"id":"f","n":1}'); // complete, never renamed
  expect((await store.loadAll()).records).toEqual([{ id: 'e', n: 1 }]);
  expect(fs.readdirSync(dir)).toEqual(['e.json']);
});
