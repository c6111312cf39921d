// ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats (summary API,
// `kubectl top`, eviction).
import type { ContainerStatsRequest, ContainerStatsResponse, ListContainerStatsRequest, ListContainerStatsResponse, ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, PodSandboxStatsRequest, PodSandboxStatsResponse } from '../../cri-api/messages';
import type { ContainerManager } from '../runtime/containers';
import type { SandboxManager } from '../runtime/sandboxes';
import type { StatsCollector } from '../runtime/stats';
import { requireString } from '../util/errors';

export function statsHandlers(stats: StatsCollector, sandboxes: SandboxManager, containers: ContainerManager) {
  return {
    async ContainerStats(req: ContainerStatsRequest): Promise<ContainerStatsResponse> {
      const c = containers.get(requireString(req.container_id, 'container_id'));
      const [s] = await stats.listContainerStats({ id: c.rec.id });
      return { stats: s };
    },

    async ListContainerStats(req: ListContainerStatsRequest): Promise<ListContainerStatsResponse> {
      return { stats: await stats.listContainerStats(req.filter) };
    },

    async PodSandboxStats(req: PodSandboxStatsRequest): Promise<PodSandboxStatsResponse> {
      const sb = sandboxes.get(requireString(req.pod_sandbox_id, 'pod_sandbox_id'));
      return { stats: await stats.podStats(sb) };
    },

    async ListPodSandboxStats(req: ListPodSandboxStatsRequest): Promise<ListPodSandboxStatsResponse> {
      return { stats: await stats.listPodStats(req.filter) };
    },
  };
}
