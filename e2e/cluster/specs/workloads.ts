// Workload controllers on podvisor, as a user sees them through the API server: a Deployment
// rolls out, scales up and down and rolls an image update with one VM per pod; Jobs end with the
// exit code the container returned (the failed Job's pod is restartPolicy Never: failed, not
// restarted); restartPolicy OnFailure and Always count restarts as kubelet does with runc.
// The Deployment's pods run busybox httpd from the agnhost images (both tags carry busybox and
// an IMAGE_VERSION file, and differ): each pod answers its image's version over HTTP, where the
// agnhost Go server took minutes to listen in a starved TCG VM. At most two of its VMs at once.
import * as k8s from '@kubernetes/client-node';
import { IMAGES } from '../support/cluster';
import { describeStatuses, hostProcesses } from '../support/kube';
import { type Namespace, shPod } from '../support/namespace';
import { alive, until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const NS = 'e2e-workloads';
const WEB = 'web';
const VERSION = (image: string) => image.split(':').pop()!;

export const workloads: SpecGroup = {
  title: 'workloads',
  namespace: NS,
  async setup(ns) {
    const { kube } = ns;
    await Promise.all([
      kube.apps.createNamespacedDeployment({ namespace: NS, body: deployment(WEB) }),
      kube.batch.createNamespacedJob({ namespace: NS, body: job('job-ok', 'echo done; exit 0') }),
      kube.batch.createNamespacedJob({ namespace: NS, body: job('job-exit3', 'echo failing; exit 3') }),
      ns.create(restartPod('on-failure', 'OnFailure', 'if [ -f /state/ran ]; then echo second; exit 0; fi; touch /state/ran; echo first; exit 1')),
      ns.create(restartPod('always', 'Always', 'echo run; sleep 1; exit 0')),
    ]);
  },
  specs,
};

function specs(ctx: Ctx, ns: () => Namespace): void {

  /** The deployment's pods not being deleted */
  async function deploymentPods(name: string): Promise<k8s.V1Pod[]> {
    const pods = await ctx().kube.core.listNamespacedPod({ namespace: NS, labelSelector: `app=${name}` });
    return pods.items.filter((p) => !p.metadata?.deletionTimestamp);
  }

  async function waitRolledOut(name: string, replicas: number, image: string): Promise<k8s.V1Pod[]> {
    const { kube } = ctx();
    return until(`deployment ${name}: ${replicas} ready replicas of ${image}`, async () => {
      const d = await kube.apps.readNamespacedDeployment({ name, namespace: NS });
      const s = d.status ?? {};
      if (s.observedGeneration !== d.metadata!.generation || s.updatedReplicas !== replicas || s.readyReplicas !== replicas || s.availableReplicas !== replicas || (s.replicas ?? 0) !== replicas) {
        throw new Error(`status ${JSON.stringify(s)}`);
      }
      const pods = await deploymentPods(name);
      if (pods.length !== replicas) throw new Error(`${pods.length} pods`);
      for (const p of pods) if (p.spec!.containers[0].image !== image) throw new Error(`pod ${p.metadata!.name} runs ${p.spec!.containers[0].image}`);
      return pods;
    }, 300_000, 1000);
  }

  /** One QEMU per pod, each pod's own; no container process and no pause on the host; each pod answers its image's version. */
  async function expectOneVmPerPod(pods: k8s.V1Pod[], image: string): Promise<{ pid: number }[]> {
    const { kube } = ctx();
    const vms = await Promise.all(pods.map((p) => kube.podVm(p)));
    expect(new Set(vms.map((v) => v.pid)).size).toBe(pods.length);
    for (const v of vms) expect(v.cmdline).toMatch(/qemu-system-x86_64/);
    expect(hostProcesses(/httpd -f -p 8080/)).toEqual([]);
    expect(hostProcesses(/(^|\/)pause( |$)/)).toEqual([]);
    for (const p of pods) expect(await httpGet(`http://${p.status!.podIP}:8080/IMAGE_VERSION`)).toBe(`${VERSION(image)}\n`);
    return vms;
  }

  it('rolls out a Deployment, scales it up and down and rolls an image update, one VM per pod', async () => {
    const { kube } = ctx();
    const name = WEB;
    const first = await waitRolledOut(name, 1, IMAGES.agnhostPrev);
    await expectOneVmPerPod(first, IMAGES.agnhostPrev);

    await kube.apps.patchNamespacedDeploymentScale({ name, namespace: NS, body: { spec: { replicas: 2 } } }, jsonMerge);
    const two = await waitRolledOut(name, 2, IMAGES.agnhostPrev);
    const twoVms = await expectOneVmPerPod(two, IMAGES.agnhostPrev);
    // the first pod stayed as it was
    expect(two.map((p) => p.metadata!.uid)).toContain(first[0].metadata!.uid);

    await kube.apps.patchNamespacedDeploymentScale({ name, namespace: NS, body: { spec: { replicas: 1 } } }, jsonMerge);
    const [kept] = await waitRolledOut(name, 1, IMAGES.agnhostPrev);
    // the VM of the pod scaled away is gone
    const gone = twoVms.filter((_, i) => two[i].metadata!.uid !== kept.metadata!.uid);
    expect(gone).toHaveLength(1);
    await until('scaled-away pod VM gone', () => {
      for (const v of gone) if (alive(v.pid)) throw new Error(`QEMU ${v.pid} alive`);
    }, 120_000, 1000);

    await kube.apps.patchNamespacedDeployment({ name, namespace: NS, body: { spec: { template: { spec: { containers: [{ name: 'web', image: IMAGES.agnhost }] } } } } }, strategicMerge);
    const updated = await waitRolledOut(name, 1, IMAGES.agnhost);
    expect(updated[0].metadata!.uid).not.toBe(kept.metadata!.uid);
    await expectOneVmPerPod(updated, IMAGES.agnhost);
    // the new pod runs the new image: kubelet reports the image podvisor resolved
    const st = updated[0].status!.containerStatuses![0];
    expect(st.image).toBe(IMAGES.agnhost);
    expect(st.imageID).toMatch(/sha256:[0-9a-f]{64}/);
    const d = await kube.apps.readNamespacedDeployment({ name, namespace: NS });
    expect(d.status!.conditions!.find((c) => c.type === 'Progressing')).toMatchObject({ status: 'True', reason: 'NewReplicaSetAvailable' });
  });

  it('completes a Job whose container exits 0', async () => {
    const j = await waitJob('job-ok', 'Complete');
    expect(j.status!.succeeded).toBe(1);
    const pod = await jobPod('job-ok');
    expect(pod.status!.phase).toBe('Succeeded');
    expect(pod.status!.containerStatuses![0].state!.terminated).toMatchObject({ exitCode: 0, reason: 'Completed' });
    expect(await ns().log(pod.metadata!.name!)).toBe('done\n');
  });

  it('fails a Job whose container exits 3: the exit code in the pod status; restartPolicy Never, so the pod Failed and was not restarted', async () => {
    const j = await waitJob('job-exit3', 'Failed');
    expect(j.status!.failed).toBe(1);
    const pod = await jobPod('job-exit3');
    expect(pod.spec!.restartPolicy).toBe('Never');
    expect(pod.status!.phase).toBe('Failed');
    const st = pod.status!.containerStatuses![0];
    expect(st.restartCount).toBe(0);
    expect(st.state!.terminated).toMatchObject({ exitCode: 3, reason: 'Error' });
    expect(await ns().log(pod.metadata!.name!)).toBe('failing\n');
  });

  it('restartPolicy OnFailure: restarts a failed container once, then the pod Succeeds', async () => {
    const p = await ns().phase('on-failure', 'Succeeded', 240_000);
    const st = p.status!.containerStatuses![0];
    expect(st.restartCount).toBe(1);
    expect(st.state!.terminated).toMatchObject({ exitCode: 0 });
    expect(await ns().log('on-failure')).toBe('second\n');
    // no `--previous` here: once the second run has exited too, kubelet's pod container deletor
    // keeps only the newest dead container of a name (pod_container_deletor.go, containersToKeep
    // 1) and removes the first run, on any runtime; previous logs of a running container: the
    // streaming group
  });

  it('restartPolicy Always: a container that exits 0 is restarted and counted (CrashLoopBackOff in between)', async () => {
    const p = await ns().wait('always', 'restarted twice', (x) => {
      const st = x.status!.containerStatuses?.[0];
      if ((st?.restartCount ?? 0) < 2) throw new Error(describeStatuses(x));
    }, 300_000);
    expect(p.status!.phase).toBe('Running');
    const st = p.status!.containerStatuses![0];
    expect(st.lastState!.terminated).toMatchObject({ exitCode: 0, reason: 'Completed' });
    await ns().delete('always'); // no more restarts
  });

  async function waitJob(name: string, condition: 'Complete' | 'Failed'): Promise<k8s.V1Job> {
    const { kube } = ctx();
    return until(`job ${name} ${condition}`, async () => {
      const j = await kube.batch.readNamespacedJob({ name, namespace: NS });
      if (j.status?.conditions?.find((c) => c.type === condition)?.status !== 'True') throw new Error(JSON.stringify(j.status));
      return j;
    }, 300_000, 1000);
  }

  async function jobPod(name: string): Promise<k8s.V1Pod> {
    const { items } = await ctx().kube.core.listNamespacedPod({ namespace: NS, labelSelector: `job-name=${name}` });
    expect(items).toHaveLength(1);
    return items[0];
  }
}

const jsonMerge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
const strategicMerge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.StrategicMergePatch);

/** busybox httpd from the image's root: Ready once it serves /IMAGE_VERSION; 1 replica, one more at most during a rollout */
function deployment(name: string): k8s.V1Deployment {
  return {
    metadata: { name },
    spec: {
      replicas: 1,
      selector: { matchLabels: { app: name } },
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          terminationGracePeriodSeconds: 1,
          containers: [{
            name: 'web', image: IMAGES.agnhostPrev, command: ['httpd', '-f', '-p', '8080', '-h', '/'],
            readinessProbe: { httpGet: { path: '/IMAGE_VERSION', port: 8080 }, periodSeconds: 2, timeoutSeconds: 10 },
          }],
        },
      },
    },
  };
}

function job(name: string, script: string): k8s.V1Job {
  return {
    metadata: { name },
    spec: { backoffLimit: 0, template: { spec: shPod(name, script, {}, { restartPolicy: 'Never' }).spec } },
  };
}

function restartPod(name: string, restartPolicy: string, script: string): k8s.V1Pod {
  return shPod(name, script, { volumeMounts: [{ name: 'state', mountPath: '/state' }] }, { restartPolicy, volumes: [{ name: 'state', emptyDir: {} }] });
}

/** GET from the host (the pod network is the node's bridge): the body of a 200 answer */
async function httpGet(url: string): Promise<string> {
  const r = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  if (r.status !== 200) throw new Error(`${url}: ${r.status}`);
  return r.text();
}
