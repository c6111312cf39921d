// What the cluster tests do through the API server (client-node, as kubectl would) and what they
// look at on the host: a namespace per test group (deleted with everything in it), waits on pod
// state, and the pod's VM as podvisor reports it (the QEMU process behind a pod).
import fs from 'node:fs';
import { PassThrough, Writable } from 'node:stream';
import * as k8s from '@kubernetes/client-node';
import type { Cluster } from './cluster';
import { diagnosePod } from './diagnose';
import { until } from './procs';

export class Kube {
  readonly core: k8s.CoreV1Api;
  readonly apps: k8s.AppsV1Api;
  readonly batch: k8s.BatchV1Api;
  readonly nodeApi: k8s.NodeV1Api;
  readonly storage: k8s.StorageV1Api;

  constructor(readonly cluster: Cluster) {
    const kc = cluster.kc;
    this.core = kc.makeApiClient(k8s.CoreV1Api);
    this.apps = kc.makeApiClient(k8s.AppsV1Api);
    this.batch = kc.makeApiClient(k8s.BatchV1Api);
    this.nodeApi = kc.makeApiClient(k8s.NodeV1Api);
    this.storage = kc.makeApiClient(k8s.StorageV1Api);
  }

  /** Creates namespace `name` and waits for its default service account (pods need it). */
  async namespace(name: string): Promise<string> {
    await this.core.createNamespace({ body: { metadata: { name } } });
    await until(`service account in ${name}`, () => this.core.readNamespacedServiceAccount({ name: 'default', namespace: name }), 60_000, 300);
    return name;
  }

  /** Deletes a namespace and waits until it (and so every pod in it) is gone. */
  async deleteNamespace(name: string, ms = 180_000): Promise<void> {
    try {
      await this.core.deleteNamespace({ name });
    } catch (err) {
      if (status(err) === 404) return;
      throw err;
    }
    await until(`namespace ${name} gone`, async () => {
      try {
        await this.core.readNamespace({ name });
      } catch (err) {
        if (status(err) === 404) return;
        throw err;
      }
      throw new Error('still there');
    }, ms, 1000);
  }

  private readonly deletions = new Map<string, Promise<void>>();

  /** Starts deleting a namespace; deletionsDone() waits for it. */
  deleteNamespaceLater(name: string, ms?: number): void {
    const p = this.deleteNamespace(name, ms);
    p.catch(() => undefined); // reported by deletionsDone
    this.deletions.set(name, p);
  }

  /** Waits for every namespace deleteNamespaceLater started; throws with the first failure. */
  async deletionsDone(): Promise<void> {
    const all = [...this.deletions.values()];
    this.deletions.clear();
    const failed = (await Promise.allSettled(all)).find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  async createPod(namespace: string, pod: k8s.V1Pod): Promise<k8s.V1Pod> {
    return this.core.createNamespacedPod({ namespace, body: pod });
  }

  /**
   * Polls the pod until `check` returns without throwing; returns the pod it last read. A wait
   * that fails says why in its message (support/diagnose.ts: events, status, podvisor's and
   * kubelet's log lines about the pod, the guest console): CI keeps nothing else.
   */
  async waitPod(namespace: string, name: string, what: string, check: (p: k8s.V1Pod) => void, ms = 180_000): Promise<k8s.V1Pod> {
    try {
      return await until(`pod ${namespace}/${name}: ${what}`, async () => {
        const p = await this.core.readNamespacedPod({ name, namespace });
        check(p);
        return p;
      }, ms, 1000);
    } catch (err) {
      (err as Error).message += `\n${await diagnosePod(this.cluster, this.core, namespace, name)}`;
      throw err;
    }
  }

  waitRunning(namespace: string, name: string, ms?: number): Promise<k8s.V1Pod> {
    return this.waitPod(namespace, name, 'Running and Ready', (p) => {
      if (p.status?.phase !== 'Running') throw new Error(`phase ${p.status?.phase} ${describeStatuses(p)}`);
      if (p.status?.conditions?.find((c) => c.type === 'Ready')?.status !== 'True') throw new Error(`not Ready ${describeStatuses(p)}`);
    }, ms);
  }

  waitPhase(namespace: string, name: string, phase: string, ms?: number): Promise<k8s.V1Pod> {
    return this.waitPod(namespace, name, `phase ${phase}`, (p) => {
      if (p.status?.phase !== phase) throw new Error(`phase ${p.status?.phase} ${describeStatuses(p)}`);
    }, ms);
  }

  /**
   * Runs a command in a container through the API server (WebSocket, kubelet, podvisor's
   * streaming server): its output and the exit code from the final Status.
   */
  async exec(namespace: string, pod: string, command: string[], opts: { container?: string; stdin?: string } = {}): Promise<{ stdout: string; stderr: string; code: number }> {
    const out = new Collect();
    const err = new Collect();
    let input: PassThrough | null = null;
    if (opts.stdin !== undefined) {
      input = new PassThrough();
      input.end(opts.stdin);
    }
    const status = await new Promise<k8s.V1Status>((resolve, reject) => {
      // podvisor gives an exec up to 120 s to start in a starved pod VM
      const timer = setTimeout(() => reject(new Error(`exec ${command.join(' ')} in ${pod}: no status in 180 s`)), 180_000);
      new k8s.Exec(this.cluster.kc)
        .exec(namespace, pod, opts.container ?? '', command, out, err, input, false, (s) => {
          clearTimeout(timer);
          resolve(s);
        })
        .catch((e) => {
          clearTimeout(timer);
          reject(e);
        });
    });
    let code = 0;
    if (status.status !== 'Success') {
      const c = status.details?.causes?.find((x) => x.reason === 'ExitCode')?.message;
      if (c === undefined) throw new Error(`exec ${command.join(' ')} in ${pod}: ${JSON.stringify(status)}`);
      code = Number(c);
    }
    return { stdout: out.text(), stderr: err.text(), code };
  }

  /** exec that must succeed: its stdout. */
  async run(namespace: string, pod: string, command: string[], container?: string): Promise<string> {
    const r = await this.exec(namespace, pod, command, { container });
    if (r.code !== 0) throw new Error(`${command.join(' ')} in ${pod} exited ${r.code}: ${r.stderr}`);
    return r.stdout;
  }

  /** The QEMU process of a pod's VM, as podvisor reports it for the pod's sandbox. */
  async podVm(pod: k8s.V1Pod): Promise<{ sandboxId: string; pid: number; cmdline: string }> {
    const d = this.cluster.daemon!;
    const { items } = await d.runtime('ListPodSandbox', { filter: { state: { state: 'SANDBOX_READY' }, label_selector: { 'io.kubernetes.pod.uid': pod.metadata!.uid! } } });
    if (items.length !== 1) throw new Error(`${items.length} ready sandboxes for pod ${pod.metadata!.name}`);
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: items[0].id, verbose: true });
    const pid = JSON.parse(st.info.info).vm.pid as number;
    return { sandboxId: items[0].id, pid, cmdline: fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ') };
  }
}

/** HTTP status of a client-node ApiException (undefined for other errors). */
export function status(err: unknown): number | undefined {
  return (err as { code?: number }).code;
}

/** One line per container state, for failure messages. */
export function describeStatuses(p: k8s.V1Pod): string {
  const all = [...(p.status?.initContainerStatuses ?? []), ...(p.status?.containerStatuses ?? [])];
  return all.map((c) => `${c.name}: ${JSON.stringify(c.state)} restarts=${c.restartCount}`).join('; ');
}

/** Host processes whose command line matches `re` (the container processes must not be among them). */
export function hostProcesses(re: RegExp): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((f) => /^\d+$/.test(f))) {
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
    } catch {
      continue;
    }
    if (cmd && re.test(cmd)) out.push(`${pid} ${cmd}`);
  }
  return out;
}

/** A Writable that keeps what it is given. */
export class Collect extends Writable {
  private readonly chunks: Buffer[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.chunks.push(Buffer.from(chunk));
    cb();
  }
  text(): string {
    return Buffer.concat(this.chunks).toString();
  }
}
