// StreamPodSandboxes, StreamContainers, StreamContainerStats, StreamPodSandboxStats,
// StreamImages, StreamPodSandboxMetrics: the server-streaming variants of the List RPCs. They
// answer with the same items as the List call, in batches, so that a node with many pods,
// containers or images never puts them all into one response (a client refuses a message over
// its limit: kubelet's is 16 MiB). A List handler is the one place that knows how to list; this
// only cuts its answer. A stream whose List is not served answers UNIMPLEMENTED.
import type { Handlers, StreamHandlers } from './handlers';

/** stream RPC → [its List RPC, the List response's repeated field, the stream response's] */
export const LIST_STREAMS: Readonly<Record<string, readonly [string, string, string]>> = {
  StreamPodSandboxes: ['ListPodSandbox', 'items', 'pod_sandboxes'],
  StreamContainers: ['ListContainers', 'containers', 'containers'],
  StreamContainerStats: ['ListContainerStats', 'stats', 'container_stats'],
  StreamPodSandboxStats: ['ListPodSandboxStats', 'stats', 'pod_sandbox_stats'],
  StreamImages: ['ListImages', 'images', 'images'],
  StreamPodSandboxMetrics: ['ListPodSandboxMetrics', 'pod_metrics', 'pod_sandbox_metrics'],
};

/** A batch ends after this many items, or once its items' JSON size passes BATCH_BYTES. */
export const BATCH_ITEMS = 500;
/** JSON is larger than protobuf for these messages, so a batch stays well under 1 MiB on the wire. */
export const BATCH_BYTES = 1 << 20;

/** Cuts `items` in order into batches of at most `maxItems`, each closed once it passes `maxBytes`. */
export function batches<T>(items: readonly T[], maxItems = BATCH_ITEMS, maxBytes = BATCH_BYTES): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let bytes = 0;
  for (const item of items) {
    cur.push(item);
    bytes += JSON.stringify(item)?.length ?? 0;
    if (cur.length >= maxItems || bytes >= maxBytes) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
  }
  if (cur.length) out.push(cur);
  return out;
}

/** The stream variants of the List handlers present in `handlers`. */
export function listStreamHandlers(handlers: Handlers): StreamHandlers {
  const out: StreamHandlers = {};
  for (const [stream, [list, from, to]] of Object.entries(LIST_STREAMS)) {
    const fn = handlers[list];
    if (!fn) continue;
    out[stream] = async (req: { filter?: unknown }, sink) => {
      // a List request is its stream's request (both carry only the filter); its answer a list in field `from`
      const res = (await fn({ filter: req.filter ?? null } as never, {})) as Record<string, unknown[] | undefined> | undefined;
      for (const batch of batches<unknown>(res?.[from] ?? [])) {
        if (sink.closed) return;
        await sink.write({ [to]: batch });
      }
    };
  }
  return out;
}
