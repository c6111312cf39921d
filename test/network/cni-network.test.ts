// CniNetwork against the real Debian CNI plugins in a private "host" netns.
import fs from 'node:fs';
import { leftovers, makeEnv, podRequest, sh, shQuiet, Env } from './helpers';
import type { CniNetwork } from '../../network/cni-network';
import type { PodNetwork } from '../../network/network-driver';

jest.setTimeout(60_000);

let env: Env;
let driver: CniNetwork;
beforeAll(() => {
  env = makeEnv('a');
  env.writeConflist();
  driver = env.driver();
});
afterAll(() => env.cleanup());

async function withPod<T>(req = podRequest(), fn: (net: PodNetwork) => Promise<T>): Promise<T> {
  let net: PodNetwork | null = null;
  try {
    net = await driver.setUp(req);
    return await fn(net);
  } finally {
    await driver.tearDown(req, net).catch(() => undefined);
    shQuiet('ip', ['netns', 'delete', `pv-${req.sandboxId.slice(0, 16)}`]);
  }
}

test('setUp: netns, IPv4+IPv6 addresses, MAC, routes, tap with tc mirred both ways', async () => {
  const req = podRequest();
  await withPod(req, async (net) => {
    expect(net.netnsName).toBe(`pv-${req.sandboxId.slice(0, 16)}`);
    expect(net.netnsPath).toBe(`/run/netns/${net.netnsName}`);
    expect(fs.existsSync(net.netnsPath)).toBe(true);
    expect(net.ips).toHaveLength(2);
    expect(net.ips[0]).toMatch(/^10\.199\.0\.\d+$/);
    expect(net.ips[1]).toMatch(/^fd00:199::/);
    expect(net.interfaces).toHaveLength(1);
    const eth0 = net.interfaces[0];
    expect(eth0.name).toBe('eth0');
    expect(eth0.mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    expect(eth0.mtu).toBe(1500);
    expect(eth0.addresses).toEqual([`${net.ips[0]}/24`, `${net.ips[1]}/64`]);
    expect(net.nics).toEqual([{ tap: 'tap0', mac: eth0.mac }]);
    expect(net.routes).toEqual(expect.arrayContaining([
      { dest: '0.0.0.0/0', gateway: '10.199.0.1', interface: 'eth0' },
      { dest: '::/0', gateway: 'fd00:199::1', interface: 'eth0' },
    ]));
    // the tap: in the netns, up, a single-queue tap with vnet_hdr
    const tap = JSON.parse(sh('ip', ['-n', net.netnsName, '-d', '-j', 'link', 'show', 'dev', 'tap0']))[0];
    expect(tap.linkinfo.info_kind).toBe('tun');
    expect(tap.linkinfo.info_data.type).toBe('tap');
    expect(tap.linkinfo.info_data.multi_queue).toBeFalsy();
    expect(tap.linkinfo.info_data.vnet_hdr).toBe(true);
    expect(tap.flags).toContain('UP');
    expect(tap.mtu).toBe(1500);
    for (const [from, to] of [['eth0', 'tap0'], ['tap0', 'eth0']]) {
      const f = sh('tc', ['-n', net.netnsName, 'filter', 'show', 'dev', from, 'ingress']);
      expect(f).toMatch(new RegExp(`mirred \\(Egress Redirect to device ${to}\\)`));
    }
    // the lease is on disk
    expect(fs.readdirSync(`${env.dataDir}/${env.netName}`)).toEqual(expect.arrayContaining([net.ips[0]]));
  });
  expect(leftovers(env, req.sandboxId)).toEqual([]);
});

test('tearDown removes everything and is idempotent (twice, null net, netns already gone)', async () => {
  const req = podRequest();
  const net = await driver.setUp(req);
  await driver.tearDown(req, net);
  expect(leftovers(env, req.sandboxId)).toEqual([]);
  await driver.tearDown(req, net);
  await driver.tearDown(req, null);
  expect(leftovers(env, req.sandboxId)).toEqual([]);

  // the netns vanished under us (e.g. host reboot): DEL still releases the lease
  const req2 = podRequest();
  const net2 = await driver.setUp(req2);
  sh('ip', ['netns', 'delete', net2.netnsName]);
  await driver.tearDown(req2, net2);
  expect(leftovers(env, req2.sandboxId)).toEqual([]);
});

test('portMappings reach portmap only; tearDown removes its iptables chains', async () => {
  const req = podRequest({
    portMappings: [
      { protocol: 'TCP', container_port: 80, host_port: 18080, host_ip: '' },
      { protocol: 'UDP', container_port: 53, host_port: 10053, host_ip: '127.0.0.1' },
      { protocol: 'TCP', container_port: 8080, host_port: 0 },
    ],
  });
  await withPod(req, async (net) => {
    const nat = sh('ip', ['netns', 'exec', env.hostNetns, 'iptables', '-t', 'nat', '-S']);
    expect(nat).toMatch(/-N CNI-DN-/);
    expect(nat).toContain(`--dport 18080 -j DNAT --to-destination ${net.ips[0]}:80`);
    expect(nat).toMatch(/-d 127\.0\.0\.1\/32 .*--dport 10053 -j DNAT/);
    expect(nat).not.toContain(':8080');
    expect(nat).toContain(req.sandboxId);
  });
  expect(leftovers(env, req.sandboxId)).toEqual([]);
});

test('a daemon restart keeps what DEL needs (new driver instance tears down)', async () => {
  const req = podRequest({ portMappings: [{ protocol: 'TCP', container_port: 80, host_port: 18081 }] });
  const net = await driver.setUp(req);
  try {
    const other = env.driver();
    await other.tearDown(req, null);
  } finally {
    await driver.tearDown(req, net).catch(() => undefined);
  }
  expect(leftovers(env, req.sandboxId)).toEqual([]);
});

test('pods set up concurrently get distinct addresses', async () => {
  const reqs = Array.from({ length: 6 }, () => podRequest());
  const nets: PodNetwork[] = [];
  try {
    const settled = await Promise.allSettled(reqs.map((r) => driver.setUp(r)));
    for (const s of settled) if (s.status === 'fulfilled') nets.push(s.value);
    expect(settled.filter((s) => s.status === 'rejected')).toEqual([]);
    const v4 = nets.map((n) => n.ips[0]);
    expect(new Set(v4).size).toBe(6);
  } finally {
    await Promise.all(reqs.map((r) => driver.tearDown(r, null).catch(() => undefined)));
  }
  for (const r of reqs) expect(leftovers(env, r.sandboxId)).toEqual([]);
});

test('bandwidth annotations reach the bandwidth plugin (capability), torn down with the pod', async () => {
  const file = env.writeConflist({ file: '05-bw.conflist' });
  const conf = JSON.parse(fs.readFileSync(file, 'utf8'));
  conf.plugins.splice(2, 0, { type: 'bandwidth', capabilities: { bandwidth: true } });
  fs.writeFileSync(file, JSON.stringify(conf));
  const req = podRequest({ annotations: { 'kubernetes.io/ingress-bandwidth': '10M', 'kubernetes.io/egress-bandwidth': '20M' } });
  try {
    await withPod(req, async () => {
      const veth = JSON.parse(sh('ip', ['-n', env.hostNetns, '-j', 'link', 'show', 'type', 'veth']))[0].ifname;
      // ingress (to the pod) is shaped by tbf on the host veth; egress via an ifb device
      expect(sh('tc', ['-n', env.hostNetns, 'qdisc', 'show', 'dev', veth])).toMatch(/tbf .*rate 10Mbit/);
      const ifbs = JSON.parse(sh('ip', ['-n', env.hostNetns, '-j', 'link', 'show', 'type', 'ifb']));
      expect(ifbs).toHaveLength(1);
      expect(sh('tc', ['-n', env.hostNetns, 'qdisc', 'show', 'dev', ifbs[0].ifname])).toMatch(/tbf .*rate 20Mbit/);
    });
    expect(JSON.parse(sh('ip', ['-n', env.hostNetns, '-j', 'link', 'show', 'type', 'ifb']))).toEqual([]);
    expect(leftovers(env, req.sandboxId)).toEqual([]);
  } finally {
    fs.rmSync(file);
  }
});

test('setUp twice for the same sandbox: ALREADY_EXISTS, the first stays intact', async () => {
  const req = podRequest();
  await withPod(req, async (net) => {
    await expect(driver.setUp(req)).rejects.toThrow(/already set up/);
    expect(fs.existsSync(net.netnsPath)).toBe(true);
    expect(sh('ip', ['-n', net.netnsName, 'link', 'show', 'tap0'])).toContain('tap0');
  });
  expect(leftovers(env, req.sandboxId)).toEqual([]);
});

test('setUp into a caller\'s netns (a host pod\'s): a veth with the address, no tap; tearDown keeps the netns', async () => {
  const req = podRequest();
  const ns = `pvt-ext-${req.sandboxId.slice(0, 8)}`;
  sh('ip', ['netns', 'add', ns]);
  let net: PodNetwork | null = null;
  try {
    net = await driver.setUp(req, { netns: `/run/netns/${ns}` });
    expect(net).toMatchObject({ netnsName: '', netnsPath: `/run/netns/${ns}`, nics: [], interfaces: [] });
    expect(net.ips[0]).toMatch(/^10\.199\.0\.\d+$/);
    const links = JSON.parse(sh('ip', ['-n', ns, '-j', 'addr', 'show']));
    expect(links.map((l: any) => l.ifname).sort()).toEqual(['eth0', 'lo']);
    expect(links.find((l: any) => l.ifname === 'eth0').addr_info.map((a: any) => a.local)).toContain(net.ips[0]);
    // reachable from the "host" (the bridge is the gateway), answered by the netns itself
    sh('ip', ['netns', 'exec', env.hostNetns, 'busybox', 'ping', '-c', '1', '-W', '2', net.ips[0]]);
    await expect(driver.setUp(req, { netns: `/run/netns/${ns}` })).rejects.toThrow(/already set up/);
    await driver.tearDown(req, net);
    net = null;
    expect(fs.existsSync(`/run/netns/${ns}`)).toBe(true);
    expect(JSON.parse(sh('ip', ['-n', ns, '-j', 'link', 'show'])).map((l: any) => l.ifname)).toEqual(['lo']);
    expect(leftovers(env, req.sandboxId)).toEqual([]);
    await expect(driver.setUp(podRequest(), { netns: '/tmp' })).rejects.toThrow(/not a network namespace/);
  } finally {
    if (net) await driver.tearDown(req, net).catch(() => undefined);
    shQuiet('ip', ['netns', 'delete', ns]);
  }
});
