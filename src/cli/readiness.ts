// Readiness of `podvisor serve` for a service manager: READY=1 goes out only after a real CRI
// Version call through the daemon's own socket has answered (what kubelet will do first), so a
// unit ordered After=podvisor.service never meets a socket that is not serving yet. STATUS=
// lines say what the daemon is doing; STOPPING=1 when it shuts down.
import * as grpc from '@grpc/grpc-js';
import { loadCri } from '../../cri-api';
import type { Logger } from '../util/log';
import { notifyWanted, sdNotify } from '../util/sd-notify';

/** Resolves once `socket` answers a CRI Version call (bounded by `timeoutMs`). */
export async function criAnswers(socket: string, timeoutMs = 10_000): Promise<string> {
  const cri = loadCri();
  const client = new cri.RuntimeServiceClient(`unix://${socket}`, grpc.credentials.createInsecure());
  try {
    return await new Promise<string>((resolve, reject) => {
      client.Version({ version: 'v1' }, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: any) =>
        err ? reject(err) : resolve(`${res.runtime_name} ${res.runtime_version}`));
    });
  } finally {
    client.close();
  }
}

/** Sends a notification when a service manager listens; a failure is logged, never fatal. */
export function notify(logger: Logger, fields: Record<string, string | number>): void {
  try {
    if (sdNotify(fields)) logger.debug({ notify: fields }, 'service manager notified');
  } catch (err) {
    logger.error({ err }, 'cannot notify the service manager');
  }
}

/** After start: proves the socket serves, then READY=1 with a STATUS line. */
export async function announceReady(logger: Logger, socket: string, status: string): Promise<void> {
  if (!notifyWanted()) return;
  const who = await criAnswers(socket);
  notify(logger, { READY: 1, STATUS: `${status} (${who})` });
}
