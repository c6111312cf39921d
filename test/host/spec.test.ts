// The OCI spec builder's host target (host pods), beside its VM target: namespaces from the
// pod's pinned files or the host's, host paths as plain binds, cgroups path, /dev/shm, etc files,
// privileged host devices, the stricter RuntimeDefault seccomp profile. Pure unit tests.
import { ALL_CAPS, buildSpec, capabilitiesIn, HostTarget } from '../../src/runtime/oci-spec';
import { runtimeDefault } from '../../src/runtime/seccomp';

const base = { metadata: { name: 'c' }, image: { image: 'busybox' }, command: ['sh'] };
const target = (over: Partial<HostTarget> = {}): HostTarget => ({
  kind: 'host', netns: '/s/pods/p/net', ipcns: '/s/pods/p/ipc', utsns: '/s/pods/p/uts', shm: '/s/pods/p/shm',
  etc: { resolvConf: '/s/pods/p/resolv.conf', hostname: '/s/pods/p/hostname' },
  cgroupsPath: '/kubepods/pod1/podvisor-c1', rootfs: '/s/containers/c1/rootfs', cgroupV2: false, nofile: 65536, ...over,
});
const ns = (o: any, t = target(), targetPid?: number) =>
  buildSpec({ target: t, config: { ...base, linux: { security_context: { namespace_options: o } } }, sandboxConfig: { hostname: 'web' }, imageConfig: {}, mounts: [], targetPid }).spec;

describe('OCI spec, host target', () => {
  it('joins the pod\'s pinned namespaces, or stays in the host\'s for NODE', () => {
    const pod = ns({});
    expect(pod.linux.namespaces).toEqual([
      { type: 'mount' }, { type: 'network', path: '/s/pods/p/net' }, { type: 'ipc', path: '/s/pods/p/ipc' }, { type: 'uts', path: '/s/pods/p/uts' }, { type: 'pid' },
    ]);
    expect(pod.hostname).toBe('web');
    const hostAll = ns({ network: 'NODE', ipc: 'NODE', pid: 'NODE' }, target({ netns: undefined, ipcns: undefined, utsns: undefined, shm: '/dev/shm' }));
    expect(hostAll.linux.namespaces).toEqual([{ type: 'mount' }]);
    expect(hostAll.hostname).toBeUndefined(); // the host's UTS namespace: not the pod's to name
    expect(hostAll.mounts.find((m: any) => m.destination === '/dev/shm')).toMatchObject({ type: 'bind', source: '/dev/shm' });
    const sharedPid = ns({ pid: 'POD' }, target({ pidns: '/proc/77/ns/pid' }));
    expect(sharedPid.linux.namespaces).toContainEqual({ type: 'pid', path: '/proc/77/ns/pid' });
    expect(ns({ pid: 'TARGET', target_id: 'x' }, target(), 4242).linux.namespaces).toContainEqual({ type: 'pid', path: '/proc/4242/ns/pid' });
    expect(ns({ pid: 'CONTAINER' }).linux.namespaces).toContainEqual({ type: 'pid' });
    expect(() => ns({}, target({ netns: undefined }))).toThrow(/no network namespace/);
    expect(ns({}, target({ cgroupV2: true })).linux.namespaces).toContainEqual({ type: 'cgroup' });
  });

  it('gives a container the pod\'s host namespaces when its own config names none (critest sends none)', () => {
    const spec = buildSpec({
      target: target({ netns: undefined, utsns: undefined, ipcns: undefined, shm: '/dev/shm' }), config: base,
      sandboxConfig: { linux: { security_context: { namespace_options: { network: 'NODE', ipc: 'NODE', pid: 'NODE' } } } }, imageConfig: {}, mounts: [],
    }).spec;
    expect(spec.linux.namespaces).toEqual([{ type: 'mount' }]);
  });

  it('binds host paths, the pod\'s shm and etc files; cgroups path, root and open-files limit', () => {
    const { spec } = buildSpec({
      target: target(), config: base, sandboxConfig: {}, imageConfig: {},
      mounts: [{ destination: '/data', source: '/var/lib/kubelet/pods/x/volumes/v', readonly: true, propagation: 'rslave' }, { destination: '/etc/hostname', source: '/k/hostname', readonly: false }],
    });
    expect(spec.mounts).toContainEqual({ destination: '/data', type: 'bind', source: '/var/lib/kubelet/pods/x/volumes/v', options: ['rbind', 'ro', 'rslave'] });
    expect(spec.mounts).toContainEqual({ destination: '/dev/shm', type: 'bind', source: '/s/pods/p/shm', options: ['rbind', 'rw'] });
    expect(spec.mounts).toContainEqual({ destination: '/etc/resolv.conf', type: 'bind', source: '/s/pods/p/resolv.conf', options: ['rbind', 'rw'] });
    // a CRI mount of the same file wins
    expect(spec.mounts.filter((m: any) => m.destination === '/etc/hostname')).toEqual([{ destination: '/etc/hostname', type: 'bind', source: '/k/hostname', options: ['rbind', 'rw'] }]);
    expect(spec.linux.cgroupsPath).toBe('/kubepods/pod1/podvisor-c1');
    expect(spec.root).toEqual({ path: '/s/containers/c1/rootfs', readonly: false });
    expect(spec.process.rlimits).toEqual([{ type: 'RLIMIT_NOFILE', hard: 65536, soft: 65536 }]);
    // the VM target is what it was
    const vm = buildSpec({ config: base, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec;
    expect(vm.root.path).toBe('rootfs');
    expect(vm.linux.cgroupsPath).toBeUndefined();
    expect(vm.process.rlimits[0].hard).toBe(1048576);
    expect(vm.linux.namespaces).toContainEqual({ type: 'network', path: '/proc/1/ns/net' });
  });

  it('recursive read-only binds are "rro"; a bidirectional mount makes the container\'s root shared (the shim sets each mount\'s own propagation)', () => {
    const spec = (mounts: any[], t: any = target()) => buildSpec({ target: t, config: base, sandboxConfig: {}, imageConfig: {}, mounts }).spec;
    const rro = spec([{ destination: '/ro', source: '/h/ro', readonly: true, recursive: true, propagation: 'rprivate' }, { destination: '/rw', source: '/h/rw', readonly: false, propagation: 'rslave' }]);
    expect(rro.mounts).toContainEqual({ destination: '/ro', type: 'bind', source: '/h/ro', options: ['rbind', 'rro', 'rprivate'] });
    expect(rro.linux.rootfsPropagation).toBeUndefined(); // libcontainer's default: rslave
    const shared = spec([{ destination: '/bi', source: '/h/bi', readonly: false, propagation: 'rshared' }, { destination: '/p', source: '/h/p', readonly: false, propagation: 'rprivate' }]);
    expect(shared.linux.rootfsPropagation).toBe('shared');
    expect(shared.mounts).toContainEqual({ destination: '/bi', type: 'bind', source: '/h/bi', options: ['rbind', 'rw', 'rshared'] });
    expect(shared.mounts).toContainEqual({ destination: '/p', type: 'bind', source: '/h/p', options: ['rbind', 'rw', 'rprivate'] });
    // the pod's own binds (from under the shared state dir) are kept private then, and only then
    expect(shared.mounts.filter((m: any) => ['/dev/shm', '/etc/resolv.conf', '/etc/hostname'].includes(m.destination)).map((m: any) => m.options)).toEqual([['rbind', 'rw', 'rprivate'], ['rbind', 'rw', 'rprivate'], ['rbind', 'rw', 'rprivate']]);
    expect(rro.mounts.find((m: any) => m.destination === '/dev/shm').options).toEqual(['rbind', 'rw']);
    // the VM target's spec is the guest's business
    expect(buildSpec({ config: base, sandboxConfig: {}, imageConfig: {}, mounts: [{ destination: '/bi', source: '/h/bi', readonly: false, propagation: 'rshared' }] }).spec.linux.rootfsPropagation).toBeUndefined();
  });

  it('gives a privileged container every host device and no filter', () => {
    const hostDevices = [{ path: '/dev/loop0', type: 'b' as const, major: 7, minor: 0, fileMode: 0o660, uid: 0, gid: 6 }, { path: '/dev/fuse', type: 'c' as const, major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 }];
    const priv = buildSpec({ target: target({ hostDevices }), config: { ...base, linux: { security_context: { privileged: true } } }, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec;
    expect(priv.linux.devices).toEqual(hostDevices);
    expect(priv.linux.resources.devices).toEqual([{ allow: false, access: 'rwm' }, { allow: true, access: 'rwm' }]);
    expect(priv.linux.seccomp).toBeUndefined();
    expect(priv.linux.maskedPaths).toEqual([]);
    const plain = buildSpec({ target: target({ hostDevices }), config: base, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec;
    expect(plain.linux.devices).toBeUndefined();
  });

  it('RuntimeDefault is stricter on the host: no new namespaces through clone, no io_uring', () => {
    const spec = buildSpec({ target: target(), config: { ...base, linux: { security_context: { seccomp: { profile_type: 'RuntimeDefault' } } } }, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec;
    const rules = spec.linux.seccomp.syscalls;
    expect(rules[0].names).toEqual(expect.arrayContaining(['io_uring_setup', 'syslog', 'unshare', 'setns', 'mount']));
    expect(rules.filter((r: any) => r.names[0] === 'clone')).toHaveLength(7);
    expect(rules).toContainEqual({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 });
    const vm = runtimeDefault(['CAP_KILL']);
    expect(vm.syscalls).toHaveLength(1);
    expect(vm.syscalls[0].names).not.toContain('io_uring_setup');
    // CAP_SYS_ADMIN may make namespaces, on the host too
    expect(runtimeDefault(['CAP_SYS_ADMIN', 'CAP_SYSLOG'], true).syscalls.map((r: any) => r.names[0])).not.toContain('clone');
    expect(runtimeDefault(['CAP_SYSLOG'], true).syscalls[0].names).not.toContain('syslog');
  });

  it('a privileged container (or one adding ALL) gets the capabilities the daemon holds, not every one (containerd: all current capabilities)', () => {
    // a confined host: every capability but CAP_SYS_RESOURCE (bit 24) in the bounding set
    const held = capabilitiesIn('000001fffeffffff');
    expect(held).toHaveLength(ALL_CAPS.length - 1);
    expect(held).not.toContain('CAP_SYS_RESOURCE');
    expect(capabilitiesIn('1')).toEqual(['CAP_CHOWN']);
    expect(capabilitiesIn('10000000000')).toEqual(['CAP_CHECKPOINT_RESTORE']);
    const caps = (sc: any, t = target({ heldCapabilities: held })) => buildSpec({ target: t, config: { ...base, linux: { security_context: sc } }, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec.process.capabilities;
    expect(caps({ privileged: true }).bounding).toEqual(held);
    expect(caps({ privileged: true }).effective).toEqual(held);
    expect(caps({ capabilities: { add_capabilities: ['ALL'], drop_capabilities: ['NET_RAW'] } }).bounding).toEqual(held.filter((c) => c !== 'CAP_NET_RAW'));
    // nothing known of the daemon: every capability, as a VM's container gets
    expect(caps({ privileged: true }, target()).bounding).toEqual(ALL_CAPS);
    expect(buildSpec({ config: { ...base, linux: { security_context: { privileged: true } } }, sandboxConfig: {}, imageConfig: {}, mounts: [] }).spec.process.capabilities.bounding).toEqual(ALL_CAPS);
  });
});
