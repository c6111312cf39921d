// RecordStore.write: a record is in place when write() returns (what a killed daemon's successor
// reads), and its `durable` settles also when the record was replaced or deleted meanwhile.
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
  const second = await store.write({ id: 'b', n: 3 });
  await store.delete('b');
  await expect(second.durable).resolves.toBeUndefined();
  expect((await store.loadAll()).records).toEqual([]);
});

test('write: a bad id is refused before anything is written', async () => {
  const store = new RecordStore<Rec>(dir);
  await expect(store.write({ id: '../x', n: 1 })).rejects.toThrow(/bad record id/);
  expect(fs.readdirSync(dir)).toEqual([]);
});
