// One test group's namespace as its specs use it: pods created, waited on, read (logs, status of
// a container by name), exec'd into and deleted by name, without repeating the namespace in every
// call; and the pod shapes the groups keep writing (a busybox shell script, a pod of several
// containers, a short grace period so deletions do not wait 30 s). Creating and deleting the
// namespace itself stays with the test file's runner (cluster.test.ts), which owns the order and
// hands each group its Namespace (SpecGroup.setup, specs), so no group builds one of its own.
import type * as k8s from '@kubernetes/client-node';
import { IMAGES } from './images';
import { describeStatuses, type Kube } from './kube';
import { until } from './procs';

export class Namespace {
  constructor(readonly kube: Kube, readonly name: string) {}

  create(pod: k8s.V1Pod): Promise<k8s.V1Pod> {
    return this.kube.createPod(this.name, pod);
  }

  /** Creates the pods at once (a group's setup: their VMs boot side by side). */
  async createAll(pods: k8s.V1Pod[]): Promise<void> {
    await Promise.all(pods.map((p) => this.create(p)));
  }

  read(pod: string): Promise<k8s.V1Pod> {
    return this.kube.core.readNamespacedPod({ name: pod, namespace: this.name });
  }

  running(pod: string, ms?: number): Promise<k8s.V1Pod> {
    return this.kube.waitRunning(this.name, pod, ms);
  }

  phase(pod: string, phase: string, ms?: number): Promise<k8s.V1Pod> {
    return this.kube.waitPhase(this.name, pod, phase, ms);
  }

  wait(pod: string, what: string, check: (p: k8s.V1Pod) => void, ms?: number): Promise<k8s.V1Pod> {
    return this.kube.waitPod(this.name, pod, what, check, ms);
  }

  log(pod: string, opts: { container?: string; previous?: boolean; timestamps?: boolean } = {}): Promise<string> {
    return this.kube.core.readNamespacedPodLog({ name: pod, namespace: this.name, ...opts });
  }

  exec(pod: string, command: string[], opts: { container?: string; stdin?: string } = {}): ReturnType<Kube['exec']> {
    return this.kube.exec(this.name, pod, command, opts);
  }

  /** `sh -c cmd` in the pod: stdout, stderr, exit code */
  sh(pod: string, cmd: string, container?: string): ReturnType<Kube['exec']> {
    return this.kube.exec(this.name, pod, ['sh', '-c', cmd], { container });
  }

  /** exec that must succeed: its stdout */
  run(pod: string, command: string[], container?: string): Promise<string> {
    return this.kube.run(this.name, pod, command, container);
  }

  /** Events about a pod (or one of its containers: `spec.containers{name}`), as "Reason: message" lines. */
  async events(pod: string, container?: string): Promise<string[]> {
    const fieldSelector = `involvedObject.name=${pod}` + (container ? `,involvedObject.fieldPath=spec.containers{${container}}` : '');
    const { items } = await this.kube.core.listNamespacedEvent({ namespace: this.name, fieldSelector });
    return items.map((e) => `${e.reason}: ${e.message}`);
  }

  delete(pod: string): Promise<unknown> {
    return this.kube.core.deleteNamespacedPod({ name: pod, namespace: this.name });
  }

  /** Deletes the pods and waits until the API server has none of them left. */
  async deleteAndWait(pods: string[], ms = 120_000): Promise<void> {
    await Promise.all(pods.map((p) => this.delete(p)));
    await until(`pods ${pods.join(', ')} gone`, async () => {
      const left = (await this.kube.core.listNamespacedPod({ namespace: this.name })).items.map((p) => p.metadata!.name!).filter((n) => pods.includes(n));
      if (left.length) throw new Error(`still there: ${left.join(', ')}`);
    }, ms, 1000);
  }
}

/** The status of container `name` (init containers too); throws when kubelet has not reported it. */
export function containerStatus(p: k8s.V1Pod, name: string): k8s.V1ContainerStatus {
  const st = [...(p.status?.initContainerStatuses ?? []), ...(p.status?.containerStatuses ?? [])].find((c) => c.name === name);
  if (!st) throw new Error(`no status of container ${name}: ${describeStatuses(p)}`);
  return st;
}

/** A pod of the given containers; deleted with a 1 s grace period unless `spec` says otherwise. */
export function podOf(name: string, containers: k8s.V1Container[], spec: Partial<k8s.V1PodSpec> = {}, labels?: Record<string, string>): k8s.V1Pod {
  return { metadata: { name, labels }, spec: { terminationGracePeriodSeconds: 1, containers, ...spec } };
}

/** A busybox container running `script` with sh. */
export function shContainer(name: string, script: string, extra: Partial<k8s.V1Container> = {}): k8s.V1Container {
  return { name, image: IMAGES.busybox, command: ['sh', '-c', script], ...extra };
}

/** A one-container pod (container `main`) running `script` in busybox. */
export function shPod(name: string, script: string, extra: Partial<k8s.V1Container> = {}, spec: Partial<k8s.V1PodSpec> = {}): k8s.V1Pod {
  return podOf(name, [shContainer('main', script, extra)], spec);
}
