// Issue 17 item 3: VM templates are a pod's RAM and device state restored as root, and their
// key is computable by anyone. An unprivileged user (nobody, through setpriv) forges a template
// where root will look for it; root must refuse it: a template directory that is not root's
// alone stops the start (init), and a forged, symlinked or loosely-moded template is never read.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { silentLogger } from '../src/util/log';
import { checkTrustedDir, UntrustedPathError } from '../src/util/trusted-path';
import { TemplateManager } from '../src/vm/templates';

const NOBODY = 65534;
const asNobody = (script: string) => execFileSync('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', 'sh', '-c', script], { stdio: 'pipe' });

let base: string;
beforeEach(() => {
  base = fs.mkdtempSync('/dev/shm/pv-trust-');
  fs.chmodSync(base, 0o700);
});
afterEach(() => fs.rmSync(base, { recursive: true, force: true }));

const manager = (dir: string) =>
  new TemplateManager({ dir, driver: { templateKeyInputs: () => ({ driver: 'test' }), memoryFileInUse: () => false } as any, guestDigest: () => 'g', logger: silentLogger });

/** A complete template for `size` under `dir`, as a build would leave it. */
function forge(m: TemplateManager, dir: string): string {
  const size = { vcpus: 1, memoryMiB: 1, nics: 0 };
  const key = m.keyOf(size);
  fs.mkdirSync(path.join(dir, key), { recursive: true });
  fs.writeFileSync(path.join(dir, key, 'meta.json'), JSON.stringify({ key, ...size, createdAt: '', inputs: {}, buildMs: 0 }));
  fs.writeFileSync(path.join(dir, key, 'state'), 'attacker device state');
  fs.writeFileSync(path.join(dir, key, 'mem'), Buffer.alloc(1 << 20));
  return key;
}

test('a template directory an unprivileged user created (the shared-tmpfs attack) stops the start', async () => {
  // /dev/shm is world-writable: nobody makes the directory root will use, with a forged template
  const shared = fs.mkdtempSync('/dev/shm/pv-trust-shared-');
  try {
    fs.chmodSync(shared, 0o1777);
    const dir = path.join(shared, 'podvisor', 'templates');
    const m = manager(dir);
    const key = m.keyOf({ vcpus: 1, memoryMiB: 1, nics: 0 });
    asNobody(`mkdir -p ${dir}/${key} && cd ${dir}/${key} && echo '{"key":"${key}","vcpus":1,"memoryMiB":1,"nics":0}' > meta.json && echo forged > state && head -c 1048576 /dev/zero > mem`);
    expect(fs.statSync(path.join(dir, key, 'mem')).uid).toBe(NOBODY);
    await expect(m.init()).rejects.toThrow(UntrustedPathError);
    await expect(m.init()).rejects.toThrow(/owned by uid 65534/);
    expect(m.read(key)).toBeUndefined();
  } finally {
    fs.rmSync(shared, { recursive: true, force: true });
  }
});

test('a trusted directory is created level by level, 0700, and passes', async () => {
  const dir = path.join(base, 'a', 'templates');
  const m = manager(dir);
  await m.init();
  expect(fs.statSync(path.join(base, 'a')).mode & 0o7777).toBe(0o700);
  expect(fs.statSync(dir).mode & 0o7777).toBe(0o700);
  expect(() => checkTrustedDir(dir)).not.toThrow();
  // a complete template made by root is read
  const key = forge(m, dir);
  expect(m.read(key)?.key).toBe(key);
});

test('templates that are not root\'s alone are never read: owned by nobody, group-writable, symlinked', async () => {
  const dir = path.join(base, 'templates');
  const m = manager(dir);
  await m.init();
  const key = forge(m, dir);
  const t = path.join(dir, key);
  expect(m.read(key)).toBeDefined();
  fs.chownSync(path.join(t, 'state'), NOBODY, NOBODY);
  expect(m.read(key)).toBeUndefined();
  fs.chownSync(path.join(t, 'state'), 0, 0);
  fs.chmodSync(path.join(t, 'mem'), 0o666);
  expect(m.read(key)).toBeUndefined();
  fs.chmodSync(path.join(t, 'mem'), 0o600);
  fs.chmodSync(t, 0o777);
  expect(m.read(key)).toBeUndefined();
  fs.chmodSync(t, 0o700);
  expect(m.read(key)).toBeDefined();
  // the key directory replaced by a symlink to somewhere a user controls
  const elsewhere = path.join(base, 'elsewhere');
  fs.renameSync(t, elsewhere);
  fs.symlinkSync(elsewhere, t);
  expect(m.read(key)).toBeUndefined();
  // and a template dir that is itself a symlink stops the start
  const link = path.join(base, 'link');
  fs.symlinkSync(dir, link);
  await expect(manager(link).init()).rejects.toThrow(/symlink/);
});
