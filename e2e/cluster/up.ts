// Brings the cluster e2e's one-node Kubernetes on podvisor up by hand, to poke at it with kubectl:
//   make cluster        (or: node dist/e2e/cluster/up.js, as root, after npx tsc)
// Prints the kubeconfig and kubectl to use, then waits; Ctrl-C (or SIGTERM) tears everything
// down and reports anything left behind. Same harness as the tests (support/cluster.ts).
import path from 'node:path';
import { Cluster, IMAGES } from './support/cluster';

async function main(): Promise<void> {
  const cluster = await Cluster.up({ verbose: true });
  const kubectl = path.join(cluster.binDir, 'kubectl');
  process.stdout.write(`
cluster up in ${Math.round(cluster.timings.up / 1000)} s (node podvisor-node, runtime podvisor)
  export KUBECONFIG=${cluster.kubeconfig}
  alias kubectl=${kubectl}
  kubectl get nodes -o wide
images (pulled through the local registry ${cluster.registry!.host}):
${Object.values(IMAGES).map((i) => `  ${i}`).join('\n')}
podvisor: socket ${cluster.daemon!.socket}, log ${path.join(cluster.daemon!.dir, 'daemon.log')}
logs of the other components: ${path.join(cluster.dir, 'logs')}
Ctrl-C tears it all down.
`);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    process.stdout.write('tearing down...\n');
    const problems = await cluster.down();
    if (problems.length) {
      process.stderr.write(`left behind:\n  ${problems.join('\n  ')}\n`);
      process.exit(1);
    }
    process.stdout.write('done: nothing left behind\n');
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
