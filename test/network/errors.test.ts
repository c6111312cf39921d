// CNI failures: a clear error (the plugin's message), and nothing left behind.
import fs from 'node:fs';
import path from 'node:path';
import { leftovers, makeEnv, podRequest, shQuiet, Env } from './helpers';
import type { CniNetwork } from '../../network/cni-network';
import { PodvisorError, type ErrorCode } from '../../src/util/errors';
import type { PodNetwork } from '../../network/network-driver';

jest.setTimeout(60_000);

let env: Env;
let driver: CniNetwork;
beforeEach(() => {
  env = makeEnv('e');
  driver = env.driver();
});
afterEach(() => env.cleanup());

async function expectFailure(p: Promise<unknown>, code: ErrorCode, pattern: RegExp): Promise<void> {
  const err = await p.then(() => undefined, (e) => e);
  expect(err).toBeInstanceOf(PodvisorError);
  expect((err as PodvisorError).code).toBe(code);
  expect((err as Error).message).toMatch(pattern);
}

test('no config at all: UNAVAILABLE, nothing created', async () => {
  const req = podRequest();
  await expectFailure(driver.setUp(req), 'unavailable', /no network config found/);
  expect(leftovers(env, req.sandboxId)).toEqual([]);
});

test('a plugin that does not exist: the chain is rolled back', async () => {
  const good = JSON.parse(fs.readFileSync(env.writeConflist(), 'utf8'));
  good.plugins.splice(1, 0, { type: 'no-such-plugin' });
  fs.writeFileSync(path.join(env.confDir, '10-pvtest.conflist'), JSON.stringify(good));
  const req = podRequest();
  await expectFailure(driver.setUp(req), 'unavailable', /CNI plugin "no-such-plugin" not found in \/opt\/cni\/bin:\/usr\/lib\/cni/);
  // bridge ADD had run: its veth and lease must be gone again
  expect(leftovers(env, req.sandboxId)).toEqual([]);
});

test('IPAM range exhausted: the CNI error message, nothing left of the failed pod', async () => {
  env.writeConflist({ ranges: [[{ subnet: '10.199.0.0/24', rangeStart: '10.199.0.10', rangeEnd: '10.199.0.10' }]] });
  const first = podRequest();
  const second = podRequest();
  let net: PodNetwork | null = null;
  try {
    net = await driver.setUp(first);
    expect(net.ips).toEqual(['10.199.0.10']);
    await expectFailure(driver.setUp(second), 'unavailable',
      /CNI plugin bridge ADD failed \(exit 1\): failed to allocate for range 0: no IP addresses available in range set: 10\.199\.0\.10-10\.199\.0\.10 \[code \d+\]/);
    expect(leftovers(env, second.sandboxId, 1)).toEqual([]);
    // the first pod is untouched
    expect(fs.existsSync(net.netnsPath)).toBe(true);
    expect(fs.readdirSync(path.join(env.dataDir, env.netName))).toContain('10.199.0.10');
  } finally {
    await driver.tearDown(first, net);
  }
  expect(leftovers(env, first.sandboxId)).toEqual([]);
  // and the address is free again
  const third = podRequest();
  try {
    expect((await driver.setUp(third)).ips).toEqual(['10.199.0.10']);
  } finally {
    await driver.tearDown(third, null);
  }
});

test('a plugin that hangs is killed after the timeout', async () => {
  const bin = path.join(env.dir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'sleepy'), '#!/bin/sh\nsleep 30\n', { mode: 0o755 });
  fs.writeFileSync(path.join(env.confDir, '10.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'slow', plugins: [{ type: 'sleepy' }] }));
  const { CniNetwork } = await import('../../network/cni-network');
  const { silentLogger } = await import('../../src/util/log');
  const d = new CniNetwork({ confDir: env.confDir, binDirs: [bin], logger: silentLogger, cacheDir: env.cacheDir, pluginTimeoutMs: 500 });
  const req = podRequest();
  try {
    const t0 = Date.now();
    await expectFailure(d.setUp(req), 'unavailable', /CNI plugin sleepy ADD: timed out after 500 ms/);
    expect(Date.now() - t0).toBeLessThan(5000); // ADD + the clean-up DEL, each ≤ 500 ms
    expect(leftovers(env, req.sandboxId)).toEqual([]);
  } finally {
    d.close();
    shQuiet('ip', ['netns', 'delete', `pv-${req.sandboxId.slice(0, 16)}`]);
  }
});

test('a plugin error object: code, msg and details in the message', async () => {
  const bin = path.join(env.dir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'grumpy'), `#!/bin/sh
cat >/dev/null
[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid network config","details":"subnet missing"}'
echo 'some stderr noise' >&2
exit 1
`, { mode: 0o755 });
  fs.writeFileSync(path.join(env.confDir, '10.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'grumpy', plugins: [{ type: 'grumpy' }] }));
  const { CniNetwork } = await import('../../network/cni-network');
  const { silentLogger } = await import('../../src/util/log');
  const d = new CniNetwork({ confDir: env.confDir, binDirs: [bin], logger: silentLogger, cacheDir: env.cacheDir });
  const req = podRequest();
  try {
    await expectFailure(d.setUp(req), 'unavailable',
      /CNI plugin grumpy ADD failed \(exit 1\): invalid network config \(subnet missing\) \[code 7\]; stderr: some stderr noise/);
    expect(leftovers(env, req.sandboxId)).toEqual([]);
  } finally {
    d.close();
  }
});
