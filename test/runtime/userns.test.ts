// User namespaces and SupplementalGroupsPolicy on the host side: which mappings a pod may ask
// for, and the OCI spec a user-namespaced container gets (guest/agent idmaps its image).
import { buildSpec } from '../../src/runtime/oci-spec';
import { effectiveUser } from '../../src/runtime/containers';
import { containerUserNamespace, podUserNamespace } from '../../src/runtime/userns';
import { hasCode } from '../../src/util/errors';

const map = (container_id: number, host_id: number, length: number) => ({ container_id, host_id, length });
const pod = (userns_options: unknown) => ({ linux: { security_context: { namespace_options: { userns_options } } } }) as any;
const base = { metadata: { name: 'c' }, image: { image: 'busybox' }, command: ['sh'] };

describe('pod user namespace options', () => {
  it('POD with one mapping each: the mapping; NODE or none: the host users', () => {
    expect(podUserNamespace(pod({ mode: 'POD', uids: [map(0, 65536, 65536)], gids: [map(0, 65536, 65536)] }))).toEqual({
      uids: [{ containerID: 0, hostID: 65536, size: 65536 }],
      gids: [{ containerID: 0, hostID: 65536, size: 65536 }],
    });
    expect(podUserNamespace(pod({ mode: 'NODE', uids: [], gids: [] }))).toBeUndefined();
    expect(podUserNamespace(pod(null))).toBeUndefined();
    expect(podUserNamespace({} as any)).toBeUndefined();
  });

  it.each([
    ['two ranges', { mode: 'POD', uids: [map(0, 1000, 100000), map(0, 2000, 100000)], gids: [map(0, 1000, 100000), map(0, 2000, 100000)] }, /exactly one uid mapping/],
    ['root not mapped', { mode: 'POD', uids: [map(1, 1000, 100000)], gids: [map(1, 1000, 100000)] }, /container id 0/],
    ['no gids', { mode: 'POD', uids: [map(0, 1000, 10)], gids: [] }, /exactly one gid mapping/],
    ['beyond 32 bits', { mode: 'POD', uids: [map(0, 2 ** 32 - 5, 10)], gids: [map(0, 0, 10)] }, /out of range/],
    ['empty range', { mode: 'POD', uids: [map(0, 1000, 0)], gids: [map(0, 1000, 10)] }, /out of range/],
    ['CONTAINER', { mode: 'CONTAINER' }, /mode CONTAINER is not supported/],
    ['TARGET', { mode: 'TARGET' }, /mode TARGET is not supported/],
  ])('refuses %s with INVALID_ARGUMENT', (_what, opts, msg) => {
    let err: unknown;
    try {
      podUserNamespace(pod(opts));
    } catch (e) {
      err = e;
    }
    expect(hasCode(err, 'invalid_argument')).toBe(true);
    expect((err as Error).message).toMatch(msg);
  });

  it('a container repeats its pod mapping or leaves it out', () => {
    const m = podUserNamespace(pod({ mode: 'POD', uids: [map(0, 65536, 65536)], gids: [map(0, 65536, 65536)] }));
    expect(containerUserNamespace(m, undefined)).toBe(m);
    expect(containerUserNamespace(m, { userns_options: { mode: 'POD', uids: [map(0, 65536, 65536)], gids: [map(0, 65536, 65536)] } } as any)).toBe(m);
    expect(() => containerUserNamespace(m, { userns_options: { mode: 'POD', uids: [map(0, 1000, 65536)], gids: [map(0, 1000, 65536)] } } as any)).toThrow(/differs from its pod/);
    expect(() => containerUserNamespace(undefined, { userns_options: { mode: 'POD', uids: [map(0, 1000, 65536)], gids: [map(0, 1000, 65536)] } } as any)).toThrow(/differs from its pod/);
  });
});

describe('OCI spec of a user-namespaced container', () => {
  const userns = { uids: [{ containerID: 0, hostID: 65536, size: 65536 }], gids: [{ containerID: 0, hostID: 65536, size: 65536 }] };

  it('gets a user namespace with the mapping and stays in the pod namespaces it cannot join', () => {
    const { spec } = buildSpec({ config: base, sandboxConfig: {}, imageConfig: {}, mounts: [], userns });
    expect(spec.linux.uidMappings).toEqual(userns.uids);
    expect(spec.linux.gidMappings).toEqual(userns.gids);
    expect(spec.linux.namespaces).toEqual([{ type: 'mount' }, { type: 'user' }, { type: 'cgroup' }]);
    const m = (d: string) => spec.mounts.find((x: any) => x.destination === d);
    expect(m('/proc')).toMatchObject({ type: 'bind', source: '/proc' });
    expect(m('/sys')).toMatchObject({ type: 'bind', source: '/sys' });
    expect(m('/sys').options).toEqual(expect.arrayContaining(['rbind', 'nosuid', 'nodev', 'noexec', 'ro']));
    expect(m('/dev/mqueue')).toMatchObject({ type: 'bind', source: '/run/podvisor/mqueue' });
  });

  it('mounts what it owns: a PID namespace of its own gets its own proc; TARGET joins the target\'s user namespace', () => {
    const own = buildSpec({ config: { ...base, linux: { security_context: { namespace_options: { pid: 'CONTAINER', network: 'POD', ipc: 'POD' } } } }, sandboxConfig: {}, imageConfig: {}, mounts: [], userns }).spec;
    expect(own.linux.namespaces).toEqual([{ type: 'mount' }, { type: 'user' }, { type: 'pid' }, { type: 'cgroup' }]);
    expect(own.mounts.find((x: any) => x.destination === '/proc')).toMatchObject({ type: 'proc' });
    const target = buildSpec({ config: { ...base, linux: { security_context: { namespace_options: { pid: 'TARGET', target_id: 'x' } } } }, sandboxConfig: {}, imageConfig: {}, mounts: [], userns, targetPid: 42 }).spec;
    expect(target.linux.namespaces).toEqual(expect.arrayContaining([{ type: 'user', path: '/proc/42/ns/user' }, { type: 'pid', path: '/proc/42/ns/pid' }]));
  });

  it('without a user namespace nothing changes', () => {
    const { spec } = buildSpec({ config: base, sandboxConfig: {}, imageConfig: {}, mounts: [] });
    expect(spec.linux.uidMappings).toBeUndefined();
    expect(spec.linux.namespaces).toEqual(expect.arrayContaining([{ type: 'network', path: '/proc/1/ns/net' }, { type: 'pid', path: '/proc/1/ns/pid' }]));
    expect(spec.mounts.find((x: any) => x.destination === '/proc')).toMatchObject({ type: 'proc' });
  });
});

describe('SupplementalGroupsPolicy', () => {
  it('Merge is the default, Strict is passed on; the primary group is left to the image unless named', () => {
    const merge = buildSpec({ config: { ...base, linux: { security_context: { run_as_user: { value: '1000' }, supplemental_groups: ['1234'] } } }, sandboxConfig: {}, imageConfig: {}, mounts: [] });
    expect(merge.groupsPolicy).toBe('merge');
    expect(merge.spec.process.user).toEqual({ uid: 1000, additionalGids: [1234] });
    const strict = buildSpec({ config: { ...base, linux: { security_context: { run_as_user: { value: '1000' }, run_as_group: { value: '7' }, supplemental_groups_policy: 'Strict' } } }, sandboxConfig: {}, imageConfig: {}, mounts: [] });
    expect(strict.groupsPolicy).toBe('strict');
    expect(strict.spec.process.user).toEqual({ uid: 1000, gid: 7, additionalGids: [] });
    expect(buildSpec({ config: base, sandboxConfig: {}, imageConfig: { config: { User: '5:6' } }, mounts: [] }).spec.process.user).toEqual({ uid: 5, gid: 6, additionalGids: [] });
  });

  it('the effective user a pod reports is checked before it is kept', () => {
    expect(effectiveUser({ uid: 1000, gid: 1000, additional_gids: [1000, 1234, 50000] })).toEqual({ uid: 1000, gid: 1000, supplementalGroups: [1000, 1234, 50000] });
    expect(effectiveUser(undefined)).toBeUndefined();
    expect(effectiveUser({ uid: -1, gid: 0, additional_gids: [] })).toBeUndefined();
    expect(effectiveUser({ uid: 0, gid: 0, additional_gids: ['x'] })).toBeUndefined();
    expect(effectiveUser({ uid: 0, gid: 2 ** 32, additional_gids: [] })).toBeUndefined();
  });
});
