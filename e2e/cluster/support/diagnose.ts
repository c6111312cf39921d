// What a failed wait for a pod says about why: CI keeps only the test output (no cluster or
// daemon logs), so a pod that never got Running must explain itself in the failure message.
// Gathered once, at the failure, and bounded (a few KB in all): the pod's status and events
// (kubelet's view), its sandboxes and containers as podvisor lists them, the tail of podvisor's
// log lines naming the pod or one of those ids (its step timings per call) and of its template
// builds, warnings and errors, of kubelet's log lines naming the pod; whether its guest agent
// answers (a stats call), its QEMU threads' CPU use, and the tail of each sandbox VM's guest
// console. Every part is best effort: a
// part that cannot be read says so and the others still come.
import fs from 'node:fs';
import path from 'node:path';
import type * as k8s from '@kubernetes/client-node';
import type { Cluster } from './cluster';

/** Bounds of each part, bytes (the whole stays under ~8 KB). */
export const DIAGNOSIS_BOUNDS = { status: 1200, events: 1200, runtime: 800, podvisor: 2500, podvisorOther: 1200, kubelet: 1500, console: 1200, line: 400 };

/** The last `bytes` of a file (not all of a log that grew large), '' when it cannot be read. */
export function fileTail(file: string, bytes: number): string {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const size = fs.fstatSync(fd).size;
    const n = Math.min(size, bytes);
    const buf = Buffer.alloc(n);
    fs.readSync(fd, buf, 0, n, size - n);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * The last lines of a log (its last `scanBytes` read) that contain one of `needles`, each cut to
 * `lineBytes`, together at most `bytes` (the newest kept).
 */
export function linesNaming(file: string, needles: string[], bytes: number, lineBytes = DIAGNOSIS_BOUNDS.line, scanBytes = 8 * 1024 * 1024): string {
  const wanted = needles.filter((x) => x.length >= 6);
  if (!wanted.length) return '';
  const lines = fileTail(file, scanBytes).split('\n').filter((l) => wanted.some((w) => l.includes(w)));
  const out: string[] = [];
  let size = 0;
  for (let i = lines.length - 1; i >= 0; i--) {
    const l = lines[i].length > lineBytes ? `${lines[i].slice(0, lineBytes)}…` : lines[i];
    if (size + l.length + 1 > bytes) break;
    out.unshift(l);
    size += l.length + 1;
  }
  return out.join('\n');
}

/** Per thread of a process: its name and CPU seconds (utime + stime), by thread id. */
function threadTimes(pid: number): Map<string, { name: string; s: number }> {
  const out = new Map<string, { name: string; s: number }>();
  const hz = 100; // USER_HZ
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(tid, { name, s: (Number(f[11]) + Number(f[12])) / hz });
    } catch { /* thread ended */ }
  }
  return out;
}

/** A VM's threads as "name cpu-seconds (+used in the last second)": a vCPU stuck busy, or never running. */
export async function qemuThreads(pid: number): Promise<string> {
  const a = threadTimes(pid);
  await new Promise((r) => setTimeout(r, 1000));
  const b = threadTimes(pid);
  return [...b].map(([tid, t]) => `${t.name} ${t.s.toFixed(1)}s (+${(t.s - (a.get(tid)?.s ?? t.s)).toFixed(2)})`).join(', ');
}

const cut = (s: string, bytes: number) => (s.length > bytes ? `${s.slice(0, bytes)}…` : s);

async function part(title: string, fn: () => Promise<string> | string): Promise<string> {
  try {
    const body = (await fn()).trimEnd();
    return `--- ${title}:\n${body || '(nothing)'}`;
  } catch (err) {
    return `--- ${title}: cannot read: ${(err as Error).message}`;
  }
}

/**
 * Why pod `namespace/name` is not where a test waited for it to be, from everything the cluster
 * can tell (bounded; never throws).
 */
export async function diagnosePod(cluster: Cluster, core: k8s.CoreV1Api, namespace: string, name: string): Promise<string> {
  const B = DIAGNOSIS_BOUNDS;
  let pod: k8s.V1Pod | undefined;
  try {
    pod = await core.readNamespacedPod({ name, namespace });
  } catch { /* reported below */ }
  const uid = pod?.metadata?.uid ?? '';
  const ids: string[] = [];
  const vmPids: number[] = [];
  const readyIds: string[] = [];
  const d = cluster.daemon;
  const parts: string[] = [];
  parts.push(await part('pod status', () => {
    if (!pod) throw new Error('pod not readable');
    const s = pod.status ?? {};
    return cut(JSON.stringify({ uid, phase: s.phase, reason: s.reason, message: s.message, conditions: s.conditions?.map((c) => `${c.type}=${c.status}${c.reason ? ` ${c.reason}` : ''}${c.message ? `: ${c.message}` : ''}`), containers: [...(s.initContainerStatuses ?? []), ...(s.containerStatuses ?? [])].map((c) => ({ name: c.name, state: c.state, lastState: c.lastState, restarts: c.restartCount, id: c.containerID })) }), B.status);
  }));
  parts.push(await part('events (kubelet, scheduler)', async () => {
    const { items } = await core.listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${name}` });
    const when = (t: Date | string | undefined) => (t ? new Date(t).toISOString() : '');
    const lines = items.map((e) => `${when(e.lastTimestamp ?? e.eventTime)} ${e.type} ${e.reason} x${e.count ?? 1}: ${e.message}`);
    return lines.join('\n').slice(-B.events);
  }));
  parts.push(await part('podvisor sandboxes and containers of the pod', async () => {
    if (!d) throw new Error('no daemon');
    const { items } = await d.runtime('ListPodSandbox', { filter: { label_selector: { 'io.kubernetes.pod.uid': uid } } }, 10_000);
    const out: string[] = [];
    for (const sb of items) {
      ids.push(sb.id);
      if (sb.state === 'SANDBOX_READY') readyIds.push(sb.id);
      try {
        const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: sb.id, verbose: true }, 10_000);
        const pid = JSON.parse(st.info?.info ?? '{}').vm?.pid;
        if (pid > 0) vmPids.push(pid);
      } catch { /* its VM is not known */ }
      const { containers } = await d.runtime('ListContainers', { filter: { pod_sandbox_id: sb.id } }, 10_000);
      for (const c of containers) ids.push(c.id);
      out.push(`sandbox ${sb.id} ${sb.state} created ${new Date(Number(sb.created_at) / 1e6).toISOString()}; containers: ${containers.map((c: { id: string; state: string; metadata: { name: string } }) => `${c.metadata.name} ${c.id.slice(0, 13)} ${c.state}`).join(', ') || 'none'}`);
    }
    return cut(out.join('\n'), B.runtime);
  }));
  parts.push(await part('podvisor log naming the pod, its sandboxes or containers (last lines)', () => {
    if (!d) throw new Error('no daemon');
    return linesNaming(path.join(d.dir, 'daemon.log'), [`${namespace}/${name}`, uid, ...ids], B.podvisor);
  }));
  // what names no pod: template builds (a pod of a new size waits for one), warnings and errors
  parts.push(await part('podvisor template builds, warnings and errors (last lines)', () => {
    if (!d) throw new Error('no daemon');
    return linesNaming(path.join(d.dir, 'daemon.log'), ['"msg":"template build', '"msg":"VM template built', '"level":40,', '"level":50,'], B.podvisorOther);
  }));
  parts.push(await part('kubelet log naming the pod (last lines)', () => {
    const log = cluster.procs.kubelet?.logFile;
    if (!log) throw new Error('no kubelet');
    return linesNaming(log, [`"${namespace}/${name}"`, uid], B.kubelet);
  }));
  // whether the pod's guest agent answers at all (a stats call, bounded by podvisor at 5 s):
  // a guest busy or blocked in a create answers late or not
  for (const id of readyIds) {
    parts.push(await part(`podvisor PodSandboxStats of ${id.slice(0, 13)} (its guest agent answering?)`, async () => {
      const t0 = Date.now();
      try {
        await d!.runtime('PodSandboxStats', { pod_sandbox_id: id }, 15_000);
        return `answered in ${Date.now() - t0} ms`;
      } catch (err) {
        return `failed after ${Date.now() - t0} ms: ${(err as Error).message}`;
      }
    }));
  }
  for (const pid of vmPids) {
    parts.push(await part(`QEMU ${pid}: its threads' CPU seconds, then their use over 1 s (a vCPU busy or idle)`, () => qemuThreads(pid)));
  }
  for (const id of ids.filter((i) => d && fs.existsSync(path.join(d.state, 'vm', i.slice(0, 16))))) {
    parts.push(await part(`guest console of sandbox ${id.slice(0, 13)} (tail)`, () => fileTail(path.join(d!.state, 'vm', id.slice(0, 16), 'console.log'), B.console)));
  }
  return parts.join('\n');
}
