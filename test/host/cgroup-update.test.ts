// UpdateContainerResources for host containers: which cgroup files get which values, in which
// order, on cgroup v1 (a controller per hierarchy) and v2, and what is refused before anything
// is written. Pure unit tests of the plan; e2e/host-pods.test.ts writes real cgroups.
import { planCgroupUpdate, sharesToWeight } from '../../src/runtime/backends/host/cgroup-update';

const v1 = { v1: new Map([['cpu', '/sys/fs/cgroup/cpu'], ['cpuacct', '/sys/fs/cgroup/cpuacct'], ['cpuset', '/sys/fs/cgroup/cpuset'], ['memory', '/sys/fs/cgroup/memory']]) };
const v2 = { v1: new Map<string, string>(), v2: '/sys/fs/cgroup' };
const cg = '/kubepods/pod1/podvisor-c1';

describe('host container resource updates', () => {
  it('cgroup v1: shares, CFS period before quota, cpuset, memory', () => {
    expect(planCgroupUpdate({ cpu: { shares: 512, quota: 50000, period: 100000, cpus: '0-1', mems: '0' }, memory: { limit: 100 << 20 } }, cg, v1)).toEqual([
      { file: `/sys/fs/cgroup/cpu${cg}/cpu.shares`, value: '512' },
      { file: `/sys/fs/cgroup/cpu${cg}/cpu.cfs_period_us`, value: '100000' },
      { file: `/sys/fs/cgroup/cpu${cg}/cpu.cfs_quota_us`, value: '50000' },
      { file: `/sys/fs/cgroup/cpuset${cg}/cpuset.cpus`, value: '0-1' },
      { file: `/sys/fs/cgroup/cpuset${cg}/cpuset.mems`, value: '0' },
      { file: `/sys/fs/cgroup/memory${cg}/memory.limit_in_bytes`, value: String(100 << 20) },
    ]);
  });

  it('cgroup v1: memory+swap goes first when it grows past the current one, after memory otherwise', () => {
    const grow = planCgroupUpdate({ memory: { limit: 200, swap: 400 } }, cg, v1, 300).map((w) => w.file.split('/').pop());
    expect(grow).toEqual(['memory.memsw.limit_in_bytes', 'memory.limit_in_bytes']);
    const shrink = planCgroupUpdate({ memory: { limit: 100, swap: 200 } }, cg, v1, 300).map((w) => w.file.split('/').pop());
    expect(shrink).toEqual(['memory.limit_in_bytes', 'memory.memsw.limit_in_bytes']);
  });

  it('cgroup v2: weight, cpu.max, memory.max, swap alone, unified files', () => {
    expect(planCgroupUpdate({ cpu: { shares: 1024, quota: 20000, period: 100000 }, memory: { limit: 1000, swap: 3000 }, unified: { 'memory.high': '900' } }, cg, v2)).toEqual([
      { file: `/sys/fs/cgroup${cg}/cpu.weight`, value: String(sharesToWeight(1024)) },
      { file: `/sys/fs/cgroup${cg}/cpu.max`, value: '20000 100000' },
      { file: `/sys/fs/cgroup${cg}/memory.max`, value: '1000' },
      { file: `/sys/fs/cgroup${cg}/memory.swap.max`, value: '2000' },
      { file: `/sys/fs/cgroup${cg}/memory.high`, value: '900' },
    ]);
    expect(planCgroupUpdate({ cpu: { period: 50000 } }, cg, v2)).toEqual([{ file: `/sys/fs/cgroup${cg}/cpu.max`, value: 'max 50000' }]);
    expect(sharesToWeight(2)).toBe(1);
    expect(sharesToWeight(262144)).toBe(10000);
    expect(sharesToWeight(1024)).toBe(39);
  });

  it('refuses bad values before writing anything (INVALID_ARGUMENT)', () => {
    const bad = (r: any, h: any = v1) => {
      try {
        planCgroupUpdate(r, cg, h);
      } catch (err) {
        return (err as { code?: string }).code;
      }
      return 'accepted';
    };
    expect(bad({ cpu: { cpus: '0\n1' } })).toBe('invalid_argument');
    expect(bad({ cpu: { cpus: '../x' } })).toBe('invalid_argument');
    expect(bad({ cpu: { shares: 1e9 } })).toBe('invalid_argument');
    expect(bad({ cpu: { quota: 1.5 } })).toBe('invalid_argument');
    expect(bad({ memory: { limit: 200, swap: 100 } })).toBe('invalid_argument');
    expect(bad({ unified: { 'memory.high': '1' } })).toBe('invalid_argument'); // v2 files on a v1 host
    expect(bad({ unified: { '../../etc/passwd': 'x' } }, v2)).toBe('invalid_argument');
    expect(bad({ unified: { 'memory.high': '1\n2' } }, v2)).toBe('invalid_argument');
    expect(bad({ cpu: { cpus: '0' } }, { v1: new Map([['cpu', '/c']]) })).toBe('failed_precondition');
    expect(bad({})).toBe('accepted');
  });
});
