// Readiness follows the conf dir without a restart; repeated set-up/tear-down leaks nothing.
import fs from 'node:fs';
import path from 'node:path';
import { leftovers, makeEnv, podRequest, sh, Env } from './helpers';

jest.setTimeout(180_000);

let env: Env;
beforeEach(() => { env = makeEnv('c'); });
afterEach(() => env.cleanup());

async function waitFor(fn: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

test('ready() flips when a conflist appears (fs.watch) and back when it goes', async () => {
  const d = env.driver({ recheckMs: 60_000 }); // long re-check: the watch must do it
  expect(d.ready()).toEqual({
    ready: false, reason: 'NetworkPluginNotReady',
    message: expect.stringContaining(`no network config found in ${env.confDir}`),
  });
  fs.writeFileSync(path.join(env.confDir, 'README'), 'not a config'); // ignored extension
  env.writeConflist();
  expect(await waitFor(() => d.ready().ready, 3000)).toBe(true);
  expect(d.ready()).toEqual({ ready: true, reason: '', message: '' });
  fs.rmSync(path.join(env.confDir, '10-pvtest.conflist'));
  expect(await waitFor(() => !d.ready().ready, 3000)).toBe(true);
});

test('ready() also flips when the conf dir itself is created later (periodic re-check)', async () => {
  const later = path.join(env.dir, 'later.d');
  const d = env.driver({ confDir: later, recheckMs: 100 });
  expect(d.ready().ready).toBe(false);
  expect(d.ready().message).toContain('cannot read CNI config dir');
  fs.mkdirSync(later);
  fs.writeFileSync(path.join(later, '99-x.conf'), JSON.stringify({ cniVersion: '0.4.0', name: 'x', type: 'bridge' }));
  expect(await waitFor(() => d.ready().ready, 3000)).toBe(true);
});

test('an invalid file is skipped, the next valid one by name is used', async () => {
  fs.writeFileSync(path.join(env.confDir, '00-broken.conflist'), '{ nope');
  const d = env.driver();
  expect(d.ready().ready).toBe(false);
  expect(d.ready().message).toMatch(/00-broken\.conflist/);
  env.writeConflist();
  expect(await waitFor(() => d.ready().ready, 3000)).toBe(true);
});

test('20 set-up/tear-down cycles leave no netns, link, tc filter, lease or iptables rule', async () => {
  env.writeConflist();
  const d = env.driver();
  // only this test's pod namespaces count: another run on the machine makes and drops its own
  const netnsNames = () => sh('ip', ['netns', 'list']).split('\n').map((l) => l.split(' ')[0]);
  const ours = new Set<string>();
  const ips = new Set<string>();
  for (let i = 0; i < 20; i++) {
    const req = podRequest({ portMappings: [{ protocol: 'TCP', container_port: 80, host_port: 19000 + i }] });
    const net = await d.setUp(req);
    ours.add(net.netnsName);
    expect(netnsNames()).toContain(net.netnsName); // so the check after the loop can fail
    ips.add(net.ips[0]);
    expect(sh('tc', ['-n', net.netnsName, 'filter', 'show', 'dev', 'eth0', 'ingress'])).toContain('mirred');
    await d.tearDown(req, net);
    expect(leftovers(env, req.sandboxId)).toEqual([]);
  }
  expect(ips.size).toBeGreaterThan(1); // host-local walks the range
  expect(ours.size).toBe(20);
  expect(netnsNames().filter((n) => ours.has(n))).toEqual([]);
  const leases = fs.readdirSync(path.join(env.dataDir, env.netName)).filter((f) => f !== 'lock' && !f.startsWith('last_reserved_ip'));
  expect(leases).toEqual([]);
  // only the bridge (and lo) remain in the "host"
  const links = JSON.parse(sh('ip', ['-n', env.hostNetns, '-j', 'link', 'show'])).map((l: any) => l.ifname).sort();
  expect(links).toEqual([env.bridge, 'lo'].sort());
  expect(sh('ip', ['netns', 'exec', env.hostNetns, 'iptables', '-t', 'nat', '-S'])).not.toMatch(/CNI-DN-|dport 19\d\d\d/);
  expect(fs.readdirSync(env.cacheDir)).toEqual([]);
});
