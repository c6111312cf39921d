// Containers as the e2e files drive them through CRI: the config kubelet sends, create + start,
// waiting for a state, ExecSync with its output as text. Shared so each file states only what
// its test is about (a pod's namespaces, a mount, a command), not how kubelet shapes a request.
import type { TestDaemon } from './daemon';

/** The namespace modes kubelet sends for an ordinary pod (and repeats per container). */
export const POD_NAMESPACES = { network: 'POD', pid: 'CONTAINER', ipc: 'POD' };

/**
 * A ContainerConfig in kubelet's shape: the container-name label, kubelet's hash and restart
 * count annotations, the log file `<name>.log`, the pod's namespace modes; `extra` replaces
 * whole top-level fields.
 */
export function containerConfig(image: string, name: string, command: string[], extra: Record<string, unknown> = {}): any {
  return {
    metadata: { name, attempt: 0 },
    image: { image },
    command,
    log_path: `${name}.log`,
    labels: { 'io.kubernetes.container.name': name },
    annotations: { 'io.kubernetes.container.hash': 'abc123', 'io.kubernetes.container.restartCount': '0' },
    linux: { security_context: { namespace_options: { ...POD_NAMESPACES } } },
    ...extra,
  };
}

/** CreateContainer + StartContainer; the container's id. */
export async function startContainer(d: TestDaemon, pod: string, podCfg: any, cfg: any): Promise<string> {
  const { container_id } = await d.runtime('CreateContainer', { pod_sandbox_id: pod, config: cfg, sandbox_config: podCfg });
  await d.runtime('StartContainer', { container_id });
  return container_id;
}

/** Polls ContainerStatus until the container is in `state`; its status then. */
export async function waitContainerState(d: TestDaemon, id: string, state: string, ms = 60_000): Promise<any> {
  const deadline = Date.now() + ms;
  for (;;) {
    const { status } = await d.runtime('ContainerStatus', { container_id: id });
    if (status.state === state) return status;
    if (Date.now() > deadline) throw new Error(`container ${id} is ${status.state}, wanted ${state}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface ExecResult {
  out: string;
  err: string;
  code: number;
}

/** ExecSync of `cmd` (argv) with its timeout in seconds; stdout and stderr as text. */
export async function execSync(d: TestDaemon, id: string, cmd: string[], timeoutS = 60): Promise<ExecResult> {
  const r = await d.runtime('ExecSync', { container_id: id, cmd, timeout: timeoutS });
  return { out: Buffer.from(r.stdout).toString(), err: Buffer.from(r.stderr).toString(), code: r.exit_code };
}

/** Calls `fn` every `every` ms until it returns something truthy (that value), or fails after `ms`. */
export async function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms = 60_000, every = 100): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}
