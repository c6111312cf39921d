// systemd readiness (Type=notify): READY=1, STOPPING=1 and STATUS= lines to the datagram socket
// that systemd names in NOTIFY_SOCKET. Node has no unix datagram sockets, so the message goes
// through libsystemd's own sd_notify (koffi FFI), which also knows the abstract-namespace and
// vsock forms of the address; libsystemd0 is on every host systemd runs on (systemd depends on
// it). sd_notify is one non-blocking sendmsg, so the synchronous call is fine here (unlike
// librados). Without NOTIFY_SOCKET (not under systemd, or Type=simple) nothing is loaded and
// every call is a no-op; when the library cannot be loaded the failure is reported once and
// later calls do nothing, so readiness problems never stop the daemon.

type SdNotify = (unsetEnvironment: number, state: string) => number;

let fn: SdNotify | undefined;
let loadError: Error | undefined;

function load(): SdNotify {
  if (fn) return fn;
  if (loadError) throw loadError;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const koffi = require('koffi');
    fn = koffi.load('libsystemd.so.0').func('int sd_notify(int unset_environment, const char *state)') as SdNotify;
    return fn;
  } catch (err) {
    loadError = new Error(`libsystemd.so.0 not loadable for sd_notify: ${(err as Error).message}`);
    throw loadError;
  }
}

/** True when a service manager asked for notifications (NOTIFY_SOCKET is set). */
export function notifyWanted(env: NodeJS.ProcessEnv = process.env): boolean {
  return !!env.NOTIFY_SOCKET;
}

/**
 * Sends `fields` (e.g. { READY: 1, STATUS: 'serving' }) as one notification. Returns true when
 * sent, false when no one listens (no NOTIFY_SOCKET); throws when libsystemd is missing or the
 * send fails (the caller logs it). Newlines in values would start new fields: they are
 * replaced by spaces.
 */
export function sdNotify(fields: Record<string, string | number>): boolean {
  if (!notifyWanted()) return false;
  const state = Object.entries(fields).map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}`).join('\n');
  const rc = load()(0, state);
  if (rc < 0) throw new Error(`sd_notify failed: errno ${-rc}`);
  return rc > 0;
}
