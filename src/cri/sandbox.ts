// RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox,
// UpdatePodSandboxResources (in-place resize of the pod VM: runtime/resize.ts).
import type { ListPodSandboxRequest, ListPodSandboxResponse, PodSandboxStatusRequest, PodSandboxStatusResponse, RemovePodSandboxRequest, RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest, StopPodSandboxResponse, UpdatePodSandboxResourcesRequest, UpdatePodSandboxResourcesResponse } from '../../cri-api/messages';
import type { ImageManager } from '../image/manager';
import type { ContainerManager } from '../runtime/containers';
import type { SandboxRecord } from '../runtime/records';
import type { SandboxManager } from '../runtime/sandboxes';
import { nowNs } from '../runtime/container-log';
import { containerStatus } from './container';
import { requireString } from '../util/errors';

function namespaceOptions(rec: SandboxRecord) {
  const o = rec.config.linux?.security_context?.namespace_options ?? {};
  return { network: o.network ?? 'POD', pid: o.pid ?? 'POD', ipc: o.ipc ?? 'POD', target_id: o.target_id ?? '', userns_options: o.userns_options ?? null };
}

function summary(rec: SandboxRecord) {
  return {
    id: rec.id,
    metadata: rec.config.metadata,
    state: rec.state,
    created_at: rec.createdAt,
    labels: rec.config.labels ?? {},
    annotations: rec.config.annotations ?? {},
    runtime_handler: rec.runtimeHandler,
  };
}

/** PodSandboxStatus.status of a pod (also sent with each container event). */
export function podSandboxStatus(rec: SandboxRecord) {
  return {
    ...summary(rec),
    network: { ip: rec.network?.ips[0] ?? '', additional_ips: (rec.network?.ips.slice(1) ?? []).map((ip) => ({ ip })) },
    linux: { namespaces: { options: namespaceOptions(rec) } },
  };
}

/** The statuses of a pod's containers. */
export function containerStatuses(containers: ContainerManager, sandboxId: string, images?: ImageManager) {
  return containers.list({ pod_sandbox_id: sandboxId }).map((c) => containerStatus(c, images));
}

export function sandboxHandlers(sandboxes: SandboxManager, containers: ContainerManager) {
  return {
    async RunPodSandbox(req: RunPodSandboxRequest): Promise<RunPodSandboxResponse> {
      const id = await sandboxes.run(req.config ?? {}, req.runtime_handler ?? '');
      return { pod_sandbox_id: id };
    },

    // Stop and Remove are idempotent: an unknown (or empty) id is already stopped and removed.
    async StopPodSandbox(req: StopPodSandboxRequest): Promise<StopPodSandboxResponse> {
      await sandboxes.stop(req.pod_sandbox_id ?? '');
      return {};
    },

    async RemovePodSandbox(req: RemovePodSandboxRequest): Promise<RemovePodSandboxResponse> {
      await sandboxes.remove(req.pod_sandbox_id ?? '');
      return {};
    },

    async UpdatePodSandboxResources(req: UpdatePodSandboxResourcesRequest): Promise<UpdatePodSandboxResourcesResponse> {
      // `overhead` is the RuntimeClass's, already part of the pod cgroup kubelet sizes; the VM
      // is sized for `resources`, the sum of the containers', as at RunPodSandbox
      await sandboxes.updateResources(requireString(req.pod_sandbox_id, 'pod_sandbox_id'), req.resources);
      return {};
    },

    async PodSandboxStatus(req: PodSandboxStatusRequest): Promise<PodSandboxStatusResponse> {
      const sb = sandboxes.get(requireString(req.pod_sandbox_id, 'pod_sandbox_id'));
      const rec = sb.rec;
      const info: Record<string, string> = {};
      if (req.verbose) {
        info.info = JSON.stringify({
          // which pod backend runs the pod (runtime/pod-backend.ts), for the handler it asked for
          backend: rec.backend ?? 'vm',
          runtimeHandler: rec.runtimeHandler,
          vm: rec.vm && {
            pid: rec.vm.pid,
            accelerator: rec.vm.accelerator,
            boot: rec.vm.bootMode,
            spare: rec.vm.spare ?? false,
            // the size it runs at, and the ceiling it may be resized up to (the boot size)
            vcpus: rec.size?.vcpus ?? rec.vm.vcpus,
            memoryMiB: rec.size?.memoryMiB ?? rec.vm.memoryMiB,
            ceiling: { vcpus: rec.vm.vcpus, memoryMiB: rec.vm.memoryMiB },
            alive: !!sb.pod?.alive(),
          },
          agentVersion: rec.agentVersion,
          images: Object.keys(rec.images),
          // a pod RestorePod made: the checkpoint it came from
          ...(rec.restoredFrom ? { restoredFrom: rec.restoredFrom } : {}),
          config: rec.config,
        });
      }
      return { status: podSandboxStatus(rec), info, containers_statuses: containerStatuses(containers, rec.id), timestamp: nowNs().toString() };
    },

    async ListPodSandbox(req: ListPodSandboxRequest): Promise<ListPodSandboxResponse> {
      return { items: sandboxes.list(req.filter).map(summary) };
    },
  };
}
