// CreateContainer, StartContainer, StopContainer, RemoveContainer, ListContainers,
// ContainerStatus, UpdateContainerResources, ReopenContainerLog, ExecSync.
import type { ContainerStatus, Mount } from '../../cri-api/messages';
import type { ContainerStatusRequest, ContainerStatusResponse, CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse, ListContainersRequest, ListContainersResponse, RemoveContainerRequest, RemoveContainerResponse, ReopenContainerLogRequest, ReopenContainerLogResponse, StartContainerRequest, StartContainerResponse, StopContainerRequest, StopContainerResponse, UpdateContainerResourcesRequest, UpdateContainerResourcesResponse } from '../../cri-api/messages';
import type { ImageManager } from '../image/manager';
import type { ContainerManager } from '../runtime/containers';
import type { CallContext } from './handlers';
import type { ContainerRecord } from '../runtime/records';
import { invalidArgument, requireString } from '../util/errors';

function imageSpec(rec: ContainerRecord, images?: ImageManager) {
  const img = images?.resolve(rec.imageId);
  return {
    image: img?.repoTags[0] ?? rec.imageSpec?.image ?? rec.imageId,
    annotations: rec.imageSpec?.annotations ?? {},
    user_specified_image: rec.imageSpec?.user_specified_image || rec.imageSpec?.image || '',
    runtime_handler: rec.imageSpec?.runtime_handler ?? '',
  };
}

/** What ListContainers' Container and ContainerStatus both say of a container. */
function containerSummary(rec: ContainerRecord, images?: ImageManager) {
  return {
    id: rec.id,
    metadata: rec.config.metadata,
    image: imageSpec(rec, images),
    image_ref: rec.imageRef,
    image_id: rec.imageId,
    state: rec.state,
    created_at: rec.createdAt,
    labels: rec.config.labels ?? {},
    annotations: rec.config.annotations ?? {},
  };
}

export function containerStatus(rec: ContainerRecord, images?: ImageManager): ContainerStatus {
  return {
    ...containerSummary(rec, images),
    started_at: rec.startedAt,
    finished_at: rec.finishedAt,
    exit_code: rec.exitCode,
    reason: rec.reason,
    message: rec.message,
    // an image volume names the image it mounts (ImageSpec.image_ref, the image id)
    mounts: (rec.config.mounts ?? []).map((m: Mount) => {
      const v = m.image?.image ? rec.imageVolumes?.find((x) => x.containerPath === m.container_path) : undefined;
      return v ? { ...m, image: { ...m.image, image_ref: v.imageId } } : m;
    }),
    log_path: rec.logPath,
    resources: rec.config.linux?.resources ? { linux: rec.config.linux.resources } : null,
    stop_signal: rec.config.stop_signal ?? 'SIGNAL_RUNTIME_DEFAULT',
    // the identity its process runs with (SupplementalGroupsPolicy), as the pod resolved it
    user: rec.user ? { linux: { uid: rec.user.uid, gid: rec.user.gid, supplemental_groups: rec.user.supplementalGroups } } : null,
  };
}

export function containerHandlers(containers: ContainerManager, images: ImageManager) {
  return {
    async CreateContainer(req: CreateContainerRequest, call?: CallContext): Promise<CreateContainerResponse> {
      const id = await containers.create(requireString(req.pod_sandbox_id, 'pod_sandbox_id'), req.config ?? {}, req.sandbox_config, { deadline: call?.deadline });
      return { container_id: id };
    },

    async StartContainer(req: StartContainerRequest, call?: CallContext): Promise<StartContainerResponse> {
      await containers.start(requireString(req.container_id, 'container_id'), { deadline: call?.deadline });
      return {};
    },

    async StopContainer(req: StopContainerRequest): Promise<StopContainerResponse> {
      const timeout = Number(req.timeout ?? 0);
      if (!Number.isFinite(timeout) || timeout < 0) throw invalidArgument('timeout must be ≥ 0');
      await containers.stop(requireString(req.container_id, 'container_id'), timeout);
      return {};
    },

    async RemoveContainer(req: RemoveContainerRequest): Promise<RemoveContainerResponse> {
      await containers.remove(req.container_id ?? ''); // idempotent: unknown means already removed
      return {};
    },

    async ListContainers(req: ListContainersRequest): Promise<ListContainersResponse> {
      return {
        containers: containers.list(req.filter).map((rec) => ({ ...containerSummary(rec, images), pod_sandbox_id: rec.sandboxId })),
      };
    },

    async ContainerStatus(req: ContainerStatusRequest): Promise<ContainerStatusResponse> {
      const c = containers.get(requireString(req.container_id, 'container_id'));
      const info: Record<string, string> = {};
      if (req.verbose) info.info = JSON.stringify({ pid: c.rec.pid, sandboxId: c.rec.sandboxId, config: c.rec.config });
      return { status: containerStatus(c.rec, images), info };
    },

    async UpdateContainerResources(req: UpdateContainerResourcesRequest): Promise<UpdateContainerResourcesResponse> {
      await containers.updateResources(requireString(req.container_id, 'container_id'), req.linux);
      return {};
    },

    async ReopenContainerLog(req: ReopenContainerLogRequest): Promise<ReopenContainerLogResponse> {
      await containers.reopenLog(requireString(req.container_id, 'container_id'));
      return {};
    },

    async ExecSync(req: ExecSyncRequest): Promise<ExecSyncResponse> {
      const timeout = Number(req.timeout ?? 0);
      const r = await containers.execSync(requireString(req.container_id, 'container_id'), req.cmd ?? [], timeout);
      return { stdout: r.stdout, stderr: r.stderr, exit_code: r.exitCode };
    },
  };
}
