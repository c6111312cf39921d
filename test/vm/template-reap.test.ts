// A template build belongs to the process that runs it (its pid in the work directory's name):
// TemplateManager.init reaps the builds of a dead builder (its QEMU through the driver's
// reapStray, then its files) and leaves a live builder's and the finished templates alone.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { silentLogger } from '../../src/util/log';
import { TemplateManager } from '../../src/vm/templates';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync('/dev/shm/pv-reap-');
  fs.chmodSync(dir, 0o700);
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

test("a dead builder's work directories are reaped (QEMU first); a live builder's and templates stay", async () => {
  const dead = spawnSync('true').pid!; // exited: no process has its pid now (barring reuse in these ms)
  const reaped: string[] = [];
  const driver = { reapStray: async (d: string) => { reaped.push(d); return 4242; } };
  const m = new TemplateManager({ dir, driver: driver as any, guestDigest: () => 'g', logger: silentLogger });
  const mk = (name: string) => {
    fs.mkdirSync(path.join(dir, name, 'share'), { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(dir, name, 'mem'), 'x');
    return name;
  };
  const deadBuild = mk(`abc.build-${dead}-0a1b2c`);
  const liveBuild = mk(`def.build-${process.pid}-3d4e5f`); // this process: alive
  const template = mk('abc');
  await m.init();
  expect(reaped).toEqual([path.join(dir, deadBuild)]);
  expect(fs.readdirSync(dir).sort()).toEqual([template, liveBuild].sort());
});
