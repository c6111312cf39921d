// Settings for the property-based (fuzz) tests: seeded and bounded in time, so they run in the
// normal suite and a failure is reproducible. FUZZ_SEED=<n> replays a run (the seed and, on a
// failure, fast-check's counterexample path are printed); FUZZ_SCALE=<k> multiplies the number
// of runs and the time limit for a longer session by hand.
import fc from 'fast-check';

const SCALE = Number(process.env.FUZZ_SCALE ?? 1) || 1;
/** One seed for the whole run: from FUZZ_SEED, else fixed (the suite is reproducible by default). */
export const FUZZ_SEED = Number(process.env.FUZZ_SEED ?? 17017);

/** fast-check parameters: `runs` cases at most, stopping after `ms` (both × FUZZ_SCALE). */
export function fuzzParams(label: string, runs: number, ms: number): fc.Parameters<unknown> {
  // eslint-disable-next-line no-console
  console.log(`fuzz ${label}: seed ${FUZZ_SEED}, ≤ ${runs * SCALE} runs, ≤ ${ms * SCALE} ms`);
  return { seed: FUZZ_SEED, numRuns: runs * SCALE, interruptAfterTimeLimit: ms * SCALE, markInterruptAsFailure: false, verbose: 1 };
}

export { fc };
