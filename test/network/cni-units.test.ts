// Pure parts: config loading, capability args, per-plugin stdin, result parsing, CNI_ARGS.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { capabilityArgs, loadNetworkConfig, parseQuantity, pluginStdin } from '../../network/cni-config';
import { parseResult } from '../../network/cni';
import { netnsNameFor } from '../../network/network-driver';

const req = (over = {}) => ({ sandboxId: 'a'.repeat(64), name: 'p', namespace: 'ns', uid: 'u', portMappings: [], annotations: {}, ...over });

test('netns name', () => {
  expect(netnsNameFor('0123456789abcdef0123456789')).toBe('pv-0123456789abcdef');
});

test('loadNetworkConfig: first file by name, .conf wrapped into a list', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pvcfg-'));
  try {
    fs.writeFileSync(path.join(dir, '20-b.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'b', plugins: [{ type: 'bridge' }] }));
    fs.writeFileSync(path.join(dir, '10-a.conf'), JSON.stringify({ cniVersion: '0.4.0', name: 'a', type: 'ptp', ipam: {} }));
    const { config } = loadNetworkConfig(dir);
    expect(config).toEqual({ name: 'a', cniVersion: '0.4.0', plugins: [{ cniVersion: '0.4.0', name: 'a', type: 'ptp', ipam: {} }], file: path.join(dir, '10-a.conf') });
    fs.writeFileSync(path.join(dir, '05-bad.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'bad', plugins: [{ type: '../evil' }] }));
    expect(loadNetworkConfig(dir).config?.name).toBe('a');
  } finally {
    fs.rmSync(dir, { recursive: true });
  }
});

test('quantities', () => {
  expect(parseQuantity('10M')).toBe(10_000_000);
  expect(parseQuantity('1Mi')).toBe(1_048_576);
  expect(parseQuantity('100k')).toBe(100_000);
  expect(parseQuantity('2500')).toBe(2500);
  expect(() => parseQuantity('10 megabits')).toThrow();
});

test('capabilityArgs: port mappings (hostPort > 0, protocol lowercased, hostIP), dns, bandwidth', () => {
  const caps = capabilityArgs(req({
    portMappings: [
      { protocol: 'TCP', container_port: 80, host_port: 8080, host_ip: '' },
      { protocol: 'SCTP', container_port: 9, host_port: 9009, host_ip: '10.0.0.1' },
      { protocol: 'UDP', container_port: 53, host_port: 0 },
    ],
    dns: { servers: ['10.96.0.10'], searches: ['svc.cluster.local'], options: ['ndots:5'] },
    annotations: { 'kubernetes.io/ingress-bandwidth': '10M', 'kubernetes.io/egress-bandwidth': '1Mi' },
  }));
  expect(caps).toEqual({
    portMappings: [
      { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
      { hostPort: 9009, containerPort: 9, protocol: 'sctp', hostIP: '10.0.0.1' },
    ],
    dns: { servers: ['10.96.0.10'], searches: ['svc.cluster.local'], options: ['ndots:5'] },
    bandwidth: { ingressRate: 10_000_000, ingressBurst: 4294967295, egressRate: 1_048_576, egressBurst: 4294967295 },
  });
  expect(capabilityArgs(req())).toEqual({ portMappings: [] });
  expect(() => capabilityArgs(req({ annotations: { 'kubernetes.io/ingress-bandwidth': '1' } }))).toThrow(/out of range/);
});

test('pluginStdin: name/cniVersion, only the capabilities the plugin asks for, prevResult', () => {
  const list = { name: 'net', cniVersion: '1.0.0' };
  const caps = { portMappings: [{ hostPort: 1, containerPort: 2, protocol: 'tcp' }], bandwidth: { ingressRate: 1000 } };
  expect(pluginStdin(list, { type: 'bridge', bridge: 'br0' }, caps, undefined)).toEqual({ type: 'bridge', bridge: 'br0', name: 'net', cniVersion: '1.0.0' });
  const prev = { cniVersion: '1.0.0', ips: [] };
  expect(pluginStdin(list, { type: 'portmap', capabilities: { portMappings: true, dns: true } }, caps, prev)).toEqual({
    type: 'portmap', capabilities: { portMappings: true, dns: true }, name: 'net', cniVersion: '1.0.0',
    runtimeConfig: { portMappings: caps.portMappings }, prevResult: prev,
  });
});

test('parseResult: 0.4.0 and 1.0.0; older refused', () => {
  const r04 = parseResult({
    cniVersion: '0.4.0',
    interfaces: [{ name: 'cni0', mac: 'aa' }, { name: 'eth0', mac: 'bb', sandbox: '/run/netns/x' }],
    ips: [{ version: '4', interface: 1, address: '10.1.0.5/16', gateway: '10.1.0.1' }],
    routes: [{ dst: '0.0.0.0/0' }],
    dns: { nameservers: ['1.1.1.1'] },
  });
  expect(r04.ips).toEqual([{ address: '10.1.0.5/16', gateway: '10.1.0.1', interface: 1 }]);
  expect(r04.interfaces[1]).toEqual({ name: 'eth0', mac: 'bb', mtu: undefined, sandbox: '/run/netns/x' });
  expect(parseResult({ cniVersion: '1.0.0', ips: [{ address: 'fd00::5/64' }] }).ips[0].interface).toBeUndefined();
  expect(() => parseResult({ cniVersion: '0.2.0', ip4: { ip: '10.0.0.1/8' } })).toThrow(/unsupported CNI result version/);
  expect(() => parseResult({ cniVersion: '1.0.0', ips: [{ address: '10.0.0.1' }] })).toThrow(/invalid ip/);
});
