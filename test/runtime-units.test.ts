// Pure pieces of the runtime: CRI log format, log path confinement, OCI spec policy, VM sizing,
// config parsing.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig, defaultConfig } from '../src/config/config';
import { PassThrough } from 'node:stream';
import { ContainerLog, formatLines, rfc3339Nano } from '../src/runtime/container-log';
import { readCriLog } from './support/cri-log';
import { checkDevices, resolveLogPath, signalNumber } from '../src/runtime/containers';
import { buildSpec, DEFAULT_CAPS, deviceRule, ociResources, parseImageUser, processArgs } from '../src/runtime/oci-spec';
import { vmSize } from '../src/runtime/backends/vm/vm-backend';

describe('CRI log format', () => {
  it('writes full lines with F and splits long ones into P records', () => {
    const { records, rest } = formatLines('stdout', Buffer.from('a\nbb\ntail'), false);
    const lines = records.toString().split('\n').filter(Boolean);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout F a$/);
    expect(lines[1]).toMatch(/ stdout F bb$/);
    expect(rest.toString()).toBe('tail');
    const long = formatLines('stderr', Buffer.from('x'.repeat(16 * 1024 + 5) + '\n'), false).records.toString().split('\n').filter(Boolean);
    expect(long.map((l) => l.split(' ').slice(1, 3).join(' '))).toEqual(['stderr P', 'stderr F']);
    expect(long[1].endsWith(' xxxxx')).toBe(true);
    expect(formatLines('stdout', Buffer.from('end'), true).records.toString()).toMatch(/^\S+Z stdout P end\n$/);
    expect(formatLines('stdout', Buffer.from('a\n'), true).records.toString()).toMatch(/^\S+Z stdout F a\n$/);
  });

  it('tags an unterminated last line P, also when it arrives in pieces around a reopen', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-log-'));
    try {
      const file = path.join(dir, '0.log');
      const log = new ContainerLog(file);
      const out = new PassThrough();
      log.pump('stdout', out);
      out.write('a\nDO');
      // until the whole line is in the file (a fixed sleep was too short on a loaded machine)
      for (let t = Date.now(); !(fs.existsSync(file) && fs.readFileSync(file, 'utf8').endsWith(' F a\n')); ) {
        if (Date.now() - t > 10_000) throw new Error('the first record never reached the file');
        await new Promise((r) => setTimeout(r, 10));
      }
      // kubelet's rotation: rename, then ReopenContainerLog
      fs.renameSync(file, `${file}.1`);
      await log.reopen();
      out.end('NE');
      await log.drained();
      await log.close();
      expect(fs.readFileSync(`${file}.1`, 'utf8')).toMatch(/^\S+Z stdout F a\n$/);
      expect(fs.readFileSync(file, 'utf8')).toMatch(/^\S+Z stdout P DONE\n$/);
      expect(readCriLog(fs.readFileSync(`${file}.1`)) + readCriLog(fs.readFileSync(file))).toBe('a\nDONE');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('formats nanosecond timestamps', () => {
    expect(rfc3339Nano(1_700_000_000_123_456_789n)).toBe('2023-11-14T22:13:20.123456789Z');
  });
});

describe('log path confinement', () => {
  it('keeps the log inside the log directory', () => {
    expect(resolveLogPath('/var/log/pods/x', 'c/0.log')).toBe('/var/log/pods/x/c/0.log');
    expect(() => resolveLogPath('/var/log/pods/x', '../../etc/passwd')).toThrow(/escapes/);
    expect(() => resolveLogPath('/var/log/pods/x', '/etc/passwd')).toThrow(/relative/);
    expect(() => resolveLogPath('', 'a.log')).toThrow(/log_directory/);
    expect(resolveLogPath('/var/log/pods/x', '')).toBe('');
  });
});

describe('OCI spec', () => {
  const base = { metadata: { name: 'c' }, image: { image: 'busybox' } };
  it('applies Kubernetes command/args rules', () => {
    const img = { Entrypoint: ['/ep'], Cmd: ['cmd'] };
    expect(processArgs({ command: [], args: [] }, img)).toEqual(['/ep', 'cmd']);
    expect(processArgs({ command: [], args: ['a'] }, img)).toEqual(['/ep', 'a']);
    expect(processArgs({ command: ['/bin/sh'], args: [] }, img)).toEqual(['/bin/sh']);
    expect(() => processArgs({}, {})).toThrow(/no command/);
  });

  it('uses default caps, masks, env and joins pod namespaces', () => {
    const { spec, username } = buildSpec({
      config: { ...base, command: ['sh'], envs: [{ key: 'A', value: '1' }], linux: { security_context: { namespace_options: { pid: 'CONTAINER' } } } },
      sandboxConfig: { hostname: 'h' },
      imageConfig: { config: { Env: ['PATH=/bin', 'A=0'], User: 'nobody' } },
      mounts: [{ destination: '/data', source: '/run/podvisor/shared/c/x/0', readonly: true }],
    });
    expect(spec.process.capabilities.bounding).toEqual(DEFAULT_CAPS);
    expect(spec.process.env).toEqual(['PATH=/bin', 'A=1']);
    expect(username).toBe('nobody');
    expect(spec.linux.maskedPaths).toContain('/proc/kcore');
    expect(spec.linux.namespaces).toEqual(expect.arrayContaining([{ type: 'network', path: '/proc/1/ns/net' }, { type: 'pid' }, { type: 'mount' }]));
    expect(spec.mounts.find((m: any) => m.destination === '/data').options).toContain('ro');
  });

  it('honours run_as_user, cap drops and privileged', () => {
    const { spec, username } = buildSpec({
      config: { ...base, command: ['sh'], linux: { security_context: { run_as_user: { value: '1000' }, capabilities: { drop_capabilities: ['ALL'], add_capabilities: ['NET_ADMIN'] } } } },
      sandboxConfig: {}, imageConfig: { config: { User: 'nobody' } }, mounts: [],
    });
    expect(spec.process.user.uid).toBe(1000);
    expect(username).toBeNull();
    expect(spec.process.capabilities.bounding).toEqual(['CAP_NET_ADMIN']);
    const priv = buildSpec({ config: { ...base, command: ['sh'], linux: { security_context: { privileged: true } } }, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec;
    expect(priv.linux.maskedPaths).toEqual([]);
    expect(priv.process.capabilities.bounding).toContain('CAP_SYS_ADMIN');
  });

  it('raw block devices: nodes under /dev, device cgroup rules with their access, all devices for privileged', () => {
    const devices = [
      { containerPath: '/dev/xvdb', major: 8, minor: 16, access: 'r', fileMode: 0o660, uid: 0, gid: 6, node: true },
      { containerPath: '/data/disk', major: 8, minor: 32, access: 'rw', fileMode: 0o660, uid: 0, gid: 6, node: false },
    ];
    const { spec } = buildSpec({ config: { ...base, command: ['sh'], linux: { resources: { cpu_shares: '512' } } }, sandboxConfig: {}, imageConfig: {}, mounts: [], devices });
    expect(spec.linux.devices).toEqual([{ path: '/dev/xvdb', type: 'b', major: 8, minor: 16, fileMode: 0o660, uid: 0, gid: 6 }]);
    expect(spec.linux.resources.devices).toEqual([
      { allow: false, access: 'rwm' },
      { allow: true, type: 'b', major: 8, minor: 16, access: 'r' },
      { allow: true, type: 'b', major: 8, minor: 32, access: 'rw' },
    ]);
    expect(spec.linux.resources.cpu).toEqual({ shares: 512 });
    const plain = buildSpec({ config: { ...base, command: ['sh'] }, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec;
    expect(plain.linux.devices).toBeUndefined();
    expect(plain.linux.resources.devices).toEqual([{ allow: false, access: 'rwm' }]);
    const priv = buildSpec({ config: { ...base, command: ['sh'], linux: { security_context: { privileged: true } } }, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec;
    expect(priv.linux.resources.devices).toEqual([{ allow: false, access: 'rwm' }, { allow: true, access: 'rwm' }]);
    // UpdateContainerResources keeps the rules
    expect(ociResources({ memory_limit_in_bytes: '1048576' }, [deviceRule(devices[0])]).devices).toEqual([{ allow: false, access: 'rwm' }, { allow: true, type: 'b', major: 8, minor: 16, access: 'r' }]);
  });

  it('checks CRI devices before attaching anything', () => {
    expect(checkDevices([{ container_path: '/dev/xvdb', host_path: '/dev/loop0', permissions: '' }])).toEqual([{ containerPath: '/dev/xvdb', hostPath: '/dev/loop0', permissions: 'rwm' }]);
    expect(checkDevices(undefined)).toEqual([]);
    expect(() => checkDevices([{ container_path: 'xvdb', host_path: '/dev/loop0', permissions: 'r' }])).toThrow(/container_path/);
    expect(() => checkDevices([{ container_path: '/dev/../etc/x', host_path: '/dev/loop0', permissions: 'r' }])).toThrow(/normalised/);
    expect(() => checkDevices([{ container_path: '/dev/x', host_path: 'loop0', permissions: 'r' }])).toThrow(/host_path/);
    expect(() => checkDevices([{ container_path: '/dev/x', host_path: '/dev/loop0', permissions: 'rx' }])).toThrow(/permissions/);
    expect(() => checkDevices([{ container_path: '/dev/x', host_path: '/dev/loop0', permissions: 'rr' }])).toThrow(/permissions/);
    expect(() => checkDevices([{ container_path: '/dev/x', host_path: '/dev/loop0', permissions: 'm' }])).toThrow(/neither read nor write/);
    expect(() => checkDevices([{ container_path: '/dev/x', host_path: '/dev/loop0', permissions: 'r' }, { container_path: '/dev/x', host_path: '/dev/loop1', permissions: 'r' }])).toThrow(/two devices/);
  });

  it('refuses host namespaces', () => {
    expect(() => buildSpec({ config: { ...base, command: ['sh'], linux: { security_context: { namespace_options: { network: 'NODE' } } } }, sandboxConfig: {}, imageConfig: {}, mounts: [] })).toThrow(/host network/);
  });

  it('parses image users and signals', () => {
    expect(parseImageUser('1000:50')).toEqual({ uid: 1000, gid: 50 });
    expect(parseImageUser('www-data')).toEqual({ username: 'www-data' });
    expect(signalNumber('SIGQUIT')).toBe(3);
    expect(signalNumber('SIGNAL_SIGKILL')).toBe(9);
    expect(signalNumber('15')).toBe(15);
    expect(signalNumber('bogus')).toBeUndefined();
  });
});

describe('VM sizing and config', () => {
  it('sizes VMs from pod resources with floors and caps', () => {
    const vm = defaultConfig().vm;
    expect(vmSize({}, vm)).toEqual({ vcpus: 1, memoryMiB: 256 });
    expect(vmSize({ linux: { resources: { cpu_quota: '250000', cpu_period: '100000', memory_limit_in_bytes: String(512 * 1024 * 1024) } } }, vm)).toEqual({ vcpus: 3, memoryMiB: 512 });
    expect(vmSize({ linux: { resources: { cpu_quota: '9900000', cpu_period: '100000' } } }, vm).vcpus).toBe(vm.maxVcpus);
  });

  it('reads TOML and refuses unknown keys', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-cfg-'));
    try {
      readsToml(dir);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  function readsToml(dir: string): void {
    const f = path.join(dir, 'c.toml');
    fs.writeFileSync(f, 'socket = "/tmp/x.sock"\n[vm]\ndefault_memory_mib = 512\naccelerator = "tcg"\n');
    const cfg = loadConfig(f, false);
    expect(cfg.socket).toBe('/tmp/x.sock');
    expect(cfg.vm.defaultMemoryMiB).toBe(512);
    fs.writeFileSync(f, '[vm]\ndefualt_vcpus = 2\n');
    expect(() => loadConfig(f, false)).toThrow(/unknown key vm.defualt_vcpus/);
    fs.writeFileSync(f, '[vm]\ndefault_vcpus = "two"\n');
    expect(() => loadConfig(f, false)).toThrow(/expected number/);
    fs.writeFileSync(f, '[vm]\ntcg_code_mib = 12\n');
    expect(loadConfig(f, false).vm.tcgCodeMiB).toBe(12);
    for (const bad of ['2', '12.5', '4096']) {
      fs.writeFileSync(f, `[vm]\ntcg_code_mib = ${bad}\n`);
      expect(() => loadConfig(f, false)).toThrow(/tcg_code_mib must be an integer 4..1024/);
    }
    fs.writeFileSync(f, 'log_level = "debug"\n');
    expect(loadConfig(f, false).cgroupDriver).toBe('cgroupfs');
    fs.writeFileSync(f, 'cgroup_driver = "systemd"\n');
    expect(loadConfig(f, false).cgroupDriver).toBe('systemd');
    fs.writeFileSync(f, 'cgroup_driver = "systemdd"\n');
    expect(() => loadConfig(f, false)).toThrow(/cgroup_driver must be cgroupfs or systemd/);
    // [runtime]: handler name → pod backend kind (the table replaces the defaults), host namespaces
    expect(loadConfig(f.replace('c.toml', 'none.toml'), true).runtime).toEqual({ handlers: { '': 'vm', podvisor: 'vm', kata: 'vm', vm: 'vm', runc: 'host', host: 'host' }, hostNamespaces: 'host' });
    fs.writeFileSync(f, '[runtime]\nhost_namespaces = "reject"\nhandlers = { "" = "vm", "fast" = "vm" }\n');
    expect(loadConfig(f, false).runtime).toEqual({ handlers: { '': 'vm', fast: 'vm' }, hostNamespaces: 'reject' });
    fs.writeFileSync(f, '[runtime]\nhost_namespaces = "maybe"\n');
    expect(() => loadConfig(f, false)).toThrow(/host_namespaces must be "host" or "reject"/);
    fs.writeFileSync(f, '[runtime]\nhandlers = { x = 3 }\n');
    expect(() => loadConfig(f, false)).toThrow(/runtime.handlers.x: expected a backend kind/);
    fs.writeFileSync(f, '[runtime]\nhandler = {}\n');
    expect(() => loadConfig(f, false)).toThrow(/unknown key runtime.handler/);
    expect(loadConfig(path.join(dir, 'missing.toml'), true).socket).toBe('/run/podvisor/podvisor.sock');
    expect(() => loadConfig(path.join(dir, 'missing.toml'), false)).toThrow(/cannot read/);
  }
});

describe('deploy/config.toml', () => {
  it('is a valid config that states the embedded defaults', () => {
    const cfg = loadConfig(path.join(__dirname, '..', 'deploy', 'config.toml'), false);
    const def = defaultConfig();
    expect({ ...cfg, vm: { ...cfg.vm, kernel: def.vm.kernel, initramfs: def.vm.initramfs } }).toEqual(def);
  });
});
