// The image build path's startup warm-up (src/image/warm-up.ts): a real synthetic layer,
// fetched over loopback by the layer threads and built into a throwaway image.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, promises as fsp, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import pino from 'pino';
import { closeLayerWorkers } from '../../src/image/layer-pool';
import { syntheticLayer, warmUpImageBuild } from '../../src/image/warm-up';

jest.setTimeout(60_000);

const work = mkdtempSync(path.join(os.tmpdir(), 'podvisor-warm-'));
afterAll(async () => {
  await closeLayerWorkers();
  await fsp.rm(work, { recursive: true, force: true });
});

test('the synthetic layer is a gzip tar of ~1900 entries (files, directories, links) whose diff_id is right', () => {
  const { blob, diffId } = syntheticLayer();
  expect(`sha256:${createHash('sha256').update(gunzipSync(blob)).digest('hex')}`).toBe(diffId);
  const file = path.join(work, 'layer.tgz');
  writeFileSync(file, blob);
  const listing = execFileSync('tar', ['tzvf', file]).toString().trim().split('\n');
  expect(listing.length).toBeGreaterThan(1800);
  for (const kind of ['d', '-', 'l', 'h']) expect(listing.some((l) => l.startsWith(kind))).toBe(true);
});

test('warm-up builds a throwaway image through the pull path in its own directory, logs it and removes the directory', async () => {
  let log = '';
  const logger = pino({ level: 'debug' }, new Writable({ write: (c, _e, cb) => ((log += c.toString()), cb()) }));
  const dir = path.join(work, 'warm-up');
  await warmUpImageBuild(dir, logger);
  expect(log).toContain('image build path warmed up');
  expect(log).not.toContain('failed');
  expect(existsSync(dir)).toBe(false);
  expect(await fsp.readdir(work)).toEqual(['layer.tgz']);
  // Once per process: a second call is the same (already settled) work.
  await warmUpImageBuild(path.join(work, 'elsewhere'), logger);
  expect(log.match(/image build path warmed up/g)).toHaveLength(1);
});
