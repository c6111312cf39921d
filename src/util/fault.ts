// Fault injection for the crash-matrix tests: PODVISOR_FAULT=<point> makes the daemon SIGKILL
// itself when it reaches that named point, as a crash (power loss, OOM kill) at that moment
// would. Unset in production: then faultPoint() is a comparison against undefined and nothing
// else. The points are listed where they are used (grep faultPoint).
const wanted = process.env.PODVISOR_FAULT;

export function faultPoint(name: string): void {
  if (wanted === undefined || wanted !== name) return;
  process.stderr.write(`podvisor: fault injection: killed at ${name}\n`);
  process.kill(process.pid, 'SIGKILL');
}
