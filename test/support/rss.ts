// Peak resident memory of a process, for tests that attack the daemon and must show it stayed
// bounded: the kernel's high-water mark (VmHWM) is reset by writing 5 to /proc/<pid>/clear_refs
// (Linux ≥ 4.0; root, or the process itself), so "peak during the attack" is a real figure,
// not a sample that could miss a spike.
import fs from 'node:fs';

const MiB = 1024 * 1024;

function field(pid: number | 'self', name: string): number {
  const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${name} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** Current resident set, bytes. */
export const rss = (pid: number | 'self' = 'self') => field(pid, 'VmRSS');

/** Peak resident set since the last resetPeak (or the start), bytes. */
export const peakRss = (pid: number | 'self' = 'self') => field(pid, 'VmHWM');

/** Makes the peak the current resident set. */
export function resetPeak(pid: number | 'self' = 'self'): void {
  fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

/**
 * Runs `attack` and returns the process's peak resident set during it and the growth over what
 * it held before, and prints both (the figures the hardening tests report).
 */
export async function measurePeak<T>(label: string, pid: number | 'self', attack: () => Promise<T>): Promise<{ result: T; before: number; peak: number; growth: number }> {
  const before = rss(pid);
  resetPeak(pid);
  const result = await attack();
  const peak = peakRss(pid);
  const growth = Math.max(0, peak - before);
  // eslint-disable-next-line no-console
  console.log(`RSS ${label}: before ${(before / MiB).toFixed(1)} MiB, peak ${(peak / MiB).toFixed(1)} MiB (+${(growth / MiB).toFixed(1)} MiB)`);
  return { result, before, peak, growth };
}

export { MiB };
