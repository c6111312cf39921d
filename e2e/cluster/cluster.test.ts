// The cluster e2e: one Kubernetes 1.37 node on podvisor (support/cluster.ts), brought up once for
// every spec group here, which drive it through the API server with @kubernetes/client-node as a
// user (kubectl) would. Every group's setup runs at once after the cluster is up (specs/context.ts);
// the tests then assert group by group. The last test tears the cluster down and asserts the host
// is as it was. The first run on a machine builds the binaries (~8-9 min on 2 cores, cached after).
import { Cluster } from './support/cluster';
import { Kube } from './support/kube';
import type { ClusterContext, SpecGroup } from './specs/context';
import { kubeletView } from './specs/kubelet-view';
import { pods } from './specs/pods';

jest.setTimeout(10 * 60_000);

const all: SpecGroup[] = [pods, kubeletView];
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
  await Promise.all(groups.map(async (g) => {
    await kube.namespace(g.namespace);
    await g.setup?.(get());
  }));
}, 40 * 60_000);

afterAll(async () => {
  await ctx?.cluster.down();
});

for (const g of groups) {
  describe(g.title, () => {
    g.specs(get);
    afterAll(() => ctx?.kube.deleteNamespace(g.namespace));
  });
}

describe('teardown', () => {
  it('stops every component and leaves nothing on the host', async () => {
    expect(await get().cluster.down()).toEqual([]);
  });
});
