// The cluster every spec group of cluster.test.ts shares, and the shape of a group. The cluster
// exists only after the test file's beforeAll (describe bodies run before it), so groups reach it
// through a getter. A group's setup() creates what its tests look at; the test file runs it while
// the group before asserts (one group ahead), so a group's pods start while the previous group's
// tests run, and no more than two groups' pods run at once. Each group owns a namespace, deleted
// (with everything in it) when its tests are done; the test file hands the group that namespace as
// a `Namespace`, so no group builds its own.
import type { Cluster } from '../support/cluster';
import type { Kube } from '../support/kube';
import type { Namespace } from '../support/namespace';

export interface ClusterContext {
  cluster: Cluster;
  kube: Kube;
}

export type Ctx = () => ClusterContext;

export interface SpecGroup {
  title: string;
  namespace: string;
  /** creates the group's objects in its namespace (which exists by then; `ns.kube` for other objects) */
  setup?(ns: Namespace): Promise<void>;
  /** set up as soon as the cluster is up, not one group ahead: its pods take minutes to be ready (agnhost under TCG) */
  early?: boolean;
  /** registers the group's tests (it, describe); `ns()` is the group's namespace once the cluster is up */
  specs(ctx: Ctx, ns: () => Namespace): void;
}
