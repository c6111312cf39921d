// The cluster e2e: one Kubernetes 1.37 node on podvisor (support/cluster.ts), brought up once for
// every spec group here, which drive it through the API server with @kubernetes/client-node as a
// user (kubectl) would. Groups run one after the other, each in a namespace of its own; a group's
// objects are created while the group before it asserts (one group ahead, so its pod VMs boot
// meanwhile; a group marked `early`, whose pods take minutes to be ready, right after the cluster
// is up), and its namespace is deleted in the background once its tests are done. So about two
// groups' pod VMs run at once: on this 2-core machine every pod VM is a TCG QEMU, and thirty
// of them started together (all groups set up at once) starved each other for minutes (agnhost
// took minutes to listen, probes and creates timed out). The last test waits for the deletions,
// tears the cluster down and asserts the host is as it was. The first run on a machine builds the
// binaries (~8-9 min on 2 cores, cached after).
import { Cluster } from './support/cluster';
import { Kube } from './support/kube';
import { Namespace } from './support/namespace';
import type { ClusterContext, SpecGroup } from './specs/context';
import { host } from './specs/host';
import { kubeletView } from './specs/kubelet-view';
import { lifecycle } from './specs/lifecycle';
import { node } from './specs/node';
import { pods } from './specs/pods';
import { probes } from './specs/probes';
import { resize } from './specs/resize';
import { storage } from './specs/storage';
import { streaming } from './specs/streaming';
import { volumes } from './specs/volumes';
import { workloads } from './specs/workloads';

jest.setTimeout(10 * 60_000);

// host restarts podvisor: last, when the other groups' pods are gone
const all: SpecGroup[] = [pods, workloads, probes, kubeletView, lifecycle, volumes, streaming, node, resize, storage, host];
// PV_CLUSTER_GROUPS=e2e-pods,e2e-node: only those groups (by namespace), while working on them
const only = process.env.PV_CLUSTER_GROUPS?.split(',');
const groups = only ? all.filter((g) => only.includes(g.namespace)) : all;

let ctx: ClusterContext | undefined;
const get = (): ClusterContext => {
  if (!ctx) throw new Error('the cluster did not come up');
  return ctx;
};
const namespaceOf = (g: SpecGroup): Namespace => new Namespace(get().kube, g.namespace);

/** Each group's setup, started at most once: its namespace, then its objects. */
const setups = new Map<SpecGroup, Promise<void>>();
function setUp(g: SpecGroup): Promise<void> {
  let p = setups.get(g);
  if (!p) {
    const t0 = Date.now();
    p = (async () => {
      await get().kube.namespace(g.namespace);
      await g.setup?.(namespaceOf(g));
      process.stderr.write(`${g.namespace}: set up in ${Date.now() - t0} ms\n`);
    })();
    p.catch(() => undefined); // reported by the group's beforeAll
    setups.set(g, p);
  }
  return p;
}

beforeAll(async () => {
  const cluster = await Cluster.up({ verbose: !!process.env.PV_CLUSTER_VERBOSE });
  ctx = { cluster, kube: new Kube(cluster) };
  process.stderr.write(`cluster up: ${JSON.stringify(cluster.timings)}\n`);
  for (const g of groups) if (g.early) void setUp(g);
}, 15 * 60_000);

afterAll(async () => {
  await ctx?.cluster.down();
});

for (const [i, g] of groups.entries()) {
  describe(g.title, () => {
    beforeAll(async () => {
      await setUp(g);
      // the next group's pods boot while this one asserts
      const next = groups[i + 1];
      if (next) void setUp(next);
    }, 5 * 60_000);
    g.specs(get, () => namespaceOf(g));
    // the namespace goes while the next groups run; teardown waits for all of them
    afterAll(() => ctx?.kube.deleteNamespaceLater(g.namespace));
  });
}

describe('teardown', () => {
  it('deletes every namespace, stops every component and leaves nothing on the host', async () => {
    await get().kube.deletionsDone();
    expect(await get().cluster.down()).toEqual([]);
  });
});
