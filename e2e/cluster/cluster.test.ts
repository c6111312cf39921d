// The cluster e2e: one Kubernetes 1.37 node on podvisor (support/cluster.ts), brought up once for
// every spec group here, which drive it through the API server with @kubernetes/client-node as a
// user (kubectl) would. Every group's setup runs right after the cluster is up, all at once
// (specs/context.ts); the tests then assert group by group, each group's namespace deleted in the
// background when its tests are done. The last test waits for those deletions, tears the cluster
// down and asserts the host is as it was. The first run on a machine builds the binaries (~8-9 min on 2 cores, cached after).
import { Cluster } from './support/cluster';
import { Kube } from './support/kube';
import type { ClusterContext, SpecGroup } from './specs/context';
import { kubeletView } from './specs/kubelet-view';
import { lifecycle } from './specs/lifecycle';
import { node } from './specs/node';
import { pods } from './specs/pods';
import { storage } from './specs/storage';
import { streaming } from './specs/streaming';
import { volumes } from './specs/volumes';

jest.setTimeout(10 * 60_000);

const all: SpecGroup[] = [pods, kubeletView, lifecycle, volumes, streaming, node, storage];
// PV_CLUSTER_GROUPS=e2e-pods,e2e-node: only those groups (by namespace), while working on them
const only = process.env.PV_CLUSTER_GROUPS?.split(',');
const groups = only ? all.filter((g) => only.includes(g.namespace)) : all;

let ctx: ClusterContext | undefined;
const get = (): ClusterContext => {
  if (!ctx) throw new Error('the cluster did not come up');
  return ctx;
};

beforeAll(async () => {
  const cluster = await Cluster.up({ verbose: !!process.env.PV_CLUSTER_VERBOSE });
  const kube = new Kube(cluster);
  ctx = { cluster, kube };
  process.stderr.write(`cluster up: ${JSON.stringify(cluster.timings)}\n`);
  // every group's objects at once: their pods start, probe, back off and restart side by side
  // while the tests assert group after group (CreateContainer is bounded by kubelet's own
  // runtimeRequestTimeout, so many pod VMs starting together only slow each other down)
  const t0 = Date.now();
  await Promise.all(groups.map(async (g) => {
    await kube.namespace(g.namespace);
    await g.setup?.(get());
  }));
  process.stderr.write(`groups set up in ${Date.now() - t0} ms\n`);
}, 15 * 60_000);

afterAll(async () => {
  await ctx?.cluster.down();
});

for (const g of groups) {
  describe(g.title, () => {
    g.specs(get);
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
