// A CNI result with two interfaces in the pod netns becomes two NICs for the VM: one tap each,
// both interfaces' addresses for the guest, and two virtio-net devices on the QEMU command line.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { parseResult } from '../../network/cni';
import { buildPodNetwork } from '../../network/pod-network';
import { launchArgv, qemuArgs } from '../../src/vm/qemu';
import { DEFAULT_TCG_CODE_MIB } from '../../src/config/config';

const ns = `pvt-mi-${crypto.randomBytes(3).toString('hex')}`;
const ip = (...args: string[]) => execFileSync('ip', ['-n', ns, ...args], { encoding: 'utf8' });

beforeAll(() => {
  execFileSync('ip', ['netns', 'add', ns]);
  // veth pairs stand in for what two CNI plugins would have put into the pod netns
  ip('link', 'add', 'eth0', 'address', '02:11:22:33:44:01', 'type', 'veth', 'peer', 'name', 'peer0');
  ip('link', 'add', 'net1', 'address', '02:11:22:33:44:02', 'mtu', '1400', 'type', 'veth', 'peer', 'name', 'peer1', 'mtu', '1400');
  ip('link', 'set', 'peer0', 'up');
  ip('link', 'set', 'peer1', 'up');
  ip('addr', 'add', '10.231.0.2/24', 'dev', 'eth0');
  ip('addr', 'add', '10.232.0.2/24', 'dev', 'net1');
  ip('link', 'set', 'eth0', 'up');
  ip('link', 'set', 'net1', 'up');
  ip('route', 'add', 'default', 'via', '10.231.0.1', 'dev', 'eth0');
});

afterAll(() => {
  execFileSync('ip', ['netns', 'delete', ns]);
});

test('two sandbox interfaces give two NICs, in order, with their own addresses and MTU', async () => {
  const path = `/run/netns/${ns}`;
  const result = parseResult({
    cniVersion: '1.0.0',
    interfaces: [{ name: 'cni0' }, { name: 'eth0', sandbox: path }, { name: 'net1', sandbox: path }],
    ips: [{ address: '10.231.0.2/24', interface: 1 }, { address: '10.232.0.2/24', interface: 2 }],
  });
  const { net, taps } = await buildPodNetwork(ns, path, result, 'eth0');
  expect(net.interfaces.map((i) => [i.name, i.mac, i.mtu, i.addresses])).toEqual([
    ['eth0', '02:11:22:33:44:01', 1500, ['10.231.0.2/24']],
    ['net1', '02:11:22:33:44:02', 1400, ['10.232.0.2/24']],
  ]);
  expect(taps.map((t) => [t.iface, t.tap])).toEqual([['eth0', 'tap0'], ['net1', 'tap1']]);
  expect(net.routes).toEqual(expect.arrayContaining([{ dest: '0.0.0.0/0', gateway: '10.231.0.1', interface: 'eth0' }]));

  const args = qemuArgs(
    { id: 'x', dir: '/tmp/x', vcpus: 1, memoryMiB: 256, sharePath: '/tmp/x/s', network: { netnsPath: path, nics: [{ tap: 'tap0', mac: net.interfaces[0].mac }, { tap: 'tap1', mac: net.interfaces[1].mac }] } },
    { kernel: 'k', initramfs: 'i', kernelArgs: '', accelerator: 'tcg' },
  );
  const devices = args.filter((a) => a.startsWith('virtio-net-device'));
  expect(devices).toEqual(['virtio-net-device,netdev=net0,mac=02:11:22:33:44:01', 'virtio-net-device,netdev=net1,mac=02:11:22:33:44:02']);
  // QEMU gets the taps as fds 3 and 4 from podvisor-launch, which opens them in the pod netns
  expect(args.filter((a) => a.startsWith('tap,'))).toEqual(['tap,id=net0,fd=3', 'tap,id=net1,fd=4']);
  const spec = { id: 'x', dir: '/tmp/x', vcpus: 1, memoryMiB: 256, sharePath: '/tmp/x/s', network: { netnsPath: path, nics: [{ tap: 'tap0', mac: 'm0' }, { tap: 'tap1', mac: 'm1' }] } };
  expect(launchArgv(spec, '/g/podvisor-launch', '/usr/bin/qemu', ['-m', '256'])).toEqual(
    ['/g/podvisor-launch', '--mount-ns', '--netns', path, '--tap', 'tap0', '--tap', 'tap1', '--', '/usr/bin/qemu', '-m', '256']);
  expect(launchArgv({ ...spec, network: undefined }, '/g/podvisor-launch', '/usr/bin/qemu', [])).toEqual(['/g/podvisor-launch', '--mount-ns', '--', '/usr/bin/qemu']);
  expect(launchArgv({ ...spec, network: undefined }, '/g/podvisor-launch', '/usr/bin/qemu', [], { noThp: true })).toEqual(['/g/podvisor-launch', '--mount-ns', '--no-thp', '--', '/usr/bin/qemu']);
  expect(launchArgv({ ...spec, network: undefined }, '/g/podvisor-launch', '/usr/bin/qemu', [], { ksm: true })).toEqual(['/g/podvisor-launch', '--mount-ns', '--ksm', '--', '/usr/bin/qemu']);
  expect(launchArgv({ ...spec, network: undefined }, '/g/podvisor-launch', '/usr/bin/qemu', [], { noPunchHole: true })).toEqual(['/g/podvisor-launch', '--mount-ns', '--no-punch-hole', '--', '/usr/bin/qemu']);
  expect(args).toContain(`tcg,tb-size=${DEFAULT_TCG_CODE_MIB}`);
  expect(qemuArgs(spec, { kernel: 'k', initramfs: 'i', kernelArgs: '', accelerator: 'tcg', tcgCodeMiB: 12 })).toContain('tcg,tb-size=12');
});
