// GetContainerEvents: a server stream of container lifecycle events (created, started,
// stopped, deleted), each with the pod's sandbox status and the statuses of its containers as
// they were when it happened. kubelet's evented PLEG reads it instead of relisting every second.
//
// Statuses are taken when the event happens, not when it is sent. A client that stops reading
// while events pile up is cut off with RESOURCE_EXHAUSTED rather than buffered without bound:
// it reconnects and relists, as it does after any stream error. When the daemon stops, the
// streams end with UNAVAILABLE at once (they would otherwise hold the shutdown's grace time).
import type { ImageManager } from '../image/manager';
import type { ContainerEvent, ContainerManager } from '../runtime/containers';
import type { SandboxManager } from '../runtime/sandboxes';
import type { StreamHandlers } from './handlers';
import { resourceExhausted, unavailable } from '../util/errors';
import { containerStatuses, podSandboxStatus } from './sandbox';

/** Events queued for one client before it is cut off. */
export const MAX_QUEUED_EVENTS = 1024;

/** The event streams' figures, read by the daemon's metrics endpoint. */
export class EventStreamStats {
  /** GetContainerEvents streams open now */
  subscribers = 0;
  /** streams cut off with RESOURCE_EXHAUSTED since start */
  cutOff = 0;
  /** events not delivered to a stream because it was cut off */
  dropped = 0;
}

export function eventHandlers(
  containers: ContainerManager, sandboxes: SandboxManager, images: ImageManager, stopping: AbortSignal,
  stats = new EventStreamStats(),
): StreamHandlers {
  const stopped = new Promise<void>((r) => (stopping.aborted ? r() : stopping.addEventListener('abort', () => r(), { once: true })));
  const response = (ev: ContainerEvent) => {
    const sb = sandboxes.find(ev.sandboxId);
    return {
      container_id: ev.containerId,
      container_event_type: ev.type,
      created_at: ev.at.toString(),
      pod_sandbox_status: sb ? podSandboxStatus(sb.rec) : null,
      containers_statuses: containerStatuses(containers, ev.sandboxId, images),
    };
  };
  return {
    async GetContainerEvents(_req, sink) {
      const queue: object[] = [];
      let overflow = false;
      let wake: (() => void) | undefined;
      const off = containers.subscribe((ev) => {
        if (queue.length >= MAX_QUEUED_EVENTS) {
          overflow = true;
          stats.dropped++;
        } else queue.push(response(ev));
        wake?.();
      });
      stats.subscribers++;
      try {
        for (;;) {
          while (queue.length && !sink.closed) await sink.write(queue.shift()!);
          if (sink.closed) return;
          if (overflow) {
            stats.cutOff++;
            stats.dropped += queue.length;
            throw resourceExhausted(`more than ${MAX_QUEUED_EVENTS} container events waited for this client: reconnect and list again`);
          }
          if (stopping.aborted) throw unavailable('podvisor is stopping: reconnect');
          await Promise.race([new Promise<void>((r) => (wake = r)), sink.gone, stopped]);
          wake = undefined;
        }
      } finally {
        off();
        stats.subscribers--;
      }
    },
  };
}
