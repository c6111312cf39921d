// Step times of one operation (CreateContainer, ExecSync, StopPodSandbox, …) in the daemon's
// debug log: one line per operation with the milliseconds each step took, so a slow call can be
// taken apart on a live node (`[log] level = "debug"`) without a profiler. Off by default: at
// any level above debug a timer is a no-op object and costs nothing but the call.
import type { Logger } from './log';

export interface StepTimer {
  /** closes the step that began at the previous mark (or at the start) and names it */
  mark(step: string): void;
  /** logs the steps and the total at debug level */
  done(): void;
}

const NOOP: StepTimer = { mark: () => undefined, done: () => undefined };

const round = (ms: number) => Math.round(ms * 10) / 10;

export function stepTimer(logger: Logger, op: string, fields: Record<string, unknown> = {}): StepTimer {
  if (!logger.isLevelEnabled('debug')) return NOOP;
  const t0 = performance.now();
  let last = t0;
  const steps: Record<string, number> = {};
  return {
    mark(step) {
      const now = performance.now();
      steps[step] = round((steps[step] ?? 0) + now - last);
      last = now;
    },
    done() {
      logger.debug({ ...fields, op, steps, ms: round(performance.now() - t0) }, 'step times');
    },
  };
}
