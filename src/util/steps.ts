// Step times of one operation (CreateContainer, ExecSync, StopPodSandbox, …) in the daemon's
// debug log: one line per operation with the milliseconds each step took, so a slow call can be
// taken apart on a live node (`[log] level = "debug"`) without a profiler. An operation with no
// end after STEP_SLOW_MS logs the steps it got through so far, once: a call that hangs (or that
// failed without done(), which only its error says) then names the step it is in. Off by
// default: at any level above debug a timer is a no-op object and costs nothing but the call.
import type { Logger } from './log';

/** How long an operation may go on before the steps it got through are logged. */
export const STEP_SLOW_MS = 20_000;

export interface StepTimer {
  /** closes the step that began at the previous mark (or at the start) and names it */
  mark(step: string): void;
  /** logs the steps and the total at debug level (`extra`: e.g. `{ failed: true }`) */
  done(extra?: Record<string, unknown>): void;
}

const NOOP: StepTimer = { mark: () => undefined, done: () => undefined };

const round = (ms: number) => Math.round(ms * 10) / 10;

export function stepTimer(logger: Logger, op: string, fields: Record<string, unknown> = {}, slowMs = STEP_SLOW_MS): StepTimer {
  if (!logger.isLevelEnabled('debug')) return NOOP;
  const t0 = performance.now();
  let last = t0;
  const steps: Record<string, number> = {};
  const slow = setTimeout(() => {
    logger.debug({ ...fields, op, steps: { ...steps }, ms: round(performance.now() - t0) }, `step times so far: no end after ${slowMs} ms (still running, or failed)`);
  }, slowMs);
  slow.unref();
  return {
    mark(step) {
      const now = performance.now();
      steps[step] = round((steps[step] ?? 0) + now - last);
      last = now;
    },
    done(extra = {}) {
      clearTimeout(slow);
      logger.debug({ ...fields, ...extra, op, steps, ms: round(performance.now() - t0) }, 'step times');
    },
  };
}
