// CRI v1 ImageService handlers on plain objects as @grpc/proto-loader gives them
// (keepCase, longs as decimal strings, defaults on). Thin: the work is in src/image/.
import type { AuthConfig as CriAuthConfig, FilesystemUsage, Image, ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest, RemoveImageResponse } from '../../cri-api/messages';
import { dirUsage, type AuthConfig, type ImageManager, type ImageRecord } from '../image/manager';
import { requireString } from '../util/errors';

export type ImageHandlerName = 'PullImage' | 'ImageStatus' | 'ListImages' | 'RemoveImage' | 'ImageFsInfo';

export interface ImageHandlerOptions {
  /** Directory holding the containers' writable layers, reported as container_filesystems. */
  containerFsDir?: string;
}

/** ms → CRI nanoseconds as a decimal string (int64). */
const nanos = (ms: number) => (BigInt(Math.round(ms)) * 1_000_000n).toString();

function imageSpecRef(spec: ImageSpec | null | undefined): string {
  return typeof spec?.image === 'string' ? spec.image : '';
}

/** CRI Image message from a record. */
export function toCriImage(r: ImageRecord): Image {
  return {
    id: r.id,
    repo_tags: r.repoTags,
    repo_digests: r.repoDigests,
    size: String(r.size),
    uid: r.user.uid !== undefined ? { value: String(r.user.uid) } : null,
    username: r.user.username ?? '',
    spec: { image: r.id, annotations: {}, user_specified_image: '', runtime_handler: '', image_ref: r.id },
    pinned: r.pinned,
  };
}

/** Only the fields the CRI AuthConfig defines, and only non-empty ones. */
function authOf(a: CriAuthConfig | null | undefined): AuthConfig | undefined {
  if (!a || typeof a !== 'object') return undefined;
  const out: AuthConfig = {};
  for (const k of ['username', 'password', 'auth', 'server_address', 'identity_token', 'registry_token'] as const) {
    const v = a[k];
    if (typeof v === 'string' && v !== '') out[k] = v;
  }
  return Object.keys(out).length ? out : undefined;
}

export function imageHandlers(images: ImageManager, opts: ImageHandlerOptions = {}) {
  return {
    async PullImage(req: PullImageRequest): Promise<PullImageResponse> {
      const ref = requireString(imageSpecRef(req?.image), 'image.image');
      const rec = await images.pull(ref, authOf(req?.auth));
      return { image_ref: rec.id };
    },

    async ImageStatus(req: ImageStatusRequest): Promise<ImageStatusResponse> {
      const ref = requireString(imageSpecRef(req?.image), 'image.image');
      const rec = images.resolve(ref);
      if (!rec) return { image: null, info: {} };
      const info: Record<string, string> = {};
      if (req?.verbose) {
        info.info = JSON.stringify({
          id: rec.id,
          repoTags: rec.repoTags,
          repoDigests: rec.repoDigests,
          size: rec.size,
          erofsPath: rec.erofsPath,
          pinned: rec.pinned,
          createdAt: new Date(rec.createdAt).toISOString(),
          imageSpec: rec.config,
        });
      }
      return { image: toCriImage(rec), info };
    },

    async ListImages(req: ListImagesRequest): Promise<ListImagesResponse> {
      const filter = imageSpecRef(req?.filter?.image);
      return { images: images.list(filter || undefined).map(toCriImage) };
    },

    async RemoveImage(req: RemoveImageRequest): Promise<RemoveImageResponse> {
      const ref = requireString(imageSpecRef(req?.image), 'image.image');
      await images.remove(ref);
      return {};
    },

    async ImageFsInfo(): Promise<ImageFsInfoResponse> {
      const fs = await images.fsInfo();
      const usage = (mountpoint: string, bytes: number, inodes: number, ts: number) => ({
        timestamp: nanos(ts),
        fs_id: { mountpoint },
        used_bytes: { value: String(bytes) },
        inodes_used: { value: String(inodes) },
      });
      const container_filesystems: FilesystemUsage[] = [];
      if (opts.containerFsDir) {
        const u = await dirUsage(opts.containerFsDir).catch(() => ({ bytes: 0, inodes: 0 }));
        container_filesystems.push(usage(opts.containerFsDir, u.bytes, u.inodes, Date.now()));
      }
      return { image_filesystems: [usage(fs.mountpoint, fs.usedBytes, fs.inodesUsed, fs.timestamp)], container_filesystems };
    },
  } satisfies Record<ImageHandlerName, unknown>;
}
