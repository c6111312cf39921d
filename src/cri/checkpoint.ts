// CheckpointContainer, CheckpointPod, RestorePod: thin adapters over runtime/checkpoints.ts
// (what a checkpoint holds and what is refused is said there).
import type { CheckpointContainerRequest, CheckpointContainerResponse, CheckpointPodRequest, CheckpointPodResponse, RestorePodRequest, RestorePodResponse } from '../../cri-api/messages';
import type { CheckpointManager } from '../runtime/checkpoints';
import { requireString } from '../util/errors';

export function checkpointHandlers(checkpoints: CheckpointManager) {
  return {
    async CheckpointContainer(req: CheckpointContainerRequest): Promise<CheckpointContainerResponse> {
      await checkpoints.checkpointContainer(requireString(req.container_id, 'container_id'), req.location ?? '');
      return {};
    },

    async CheckpointPod(req: CheckpointPodRequest): Promise<CheckpointPodResponse> {
      await checkpoints.checkpointPod(requireString(req.pod_sandbox_id, 'pod_sandbox_id'), req.output_path ?? '', req.container_ids ?? [], req.options ?? {});
      return {};
    },

    async RestorePod(req: RestorePodRequest): Promise<RestorePodResponse> {
      const r = await checkpoints.restorePod(requireString(req.checkpoint_path, 'checkpoint_path'), req.config, req.runtime_handler || undefined, req.options ?? {}, req.container_configs ?? []);
      return { pod_sandbox_id: r.podSandboxId, restored_containers: r.containers.map((c) => ({ name: c.name, container_id: c.id })) };
    },
  };
}
