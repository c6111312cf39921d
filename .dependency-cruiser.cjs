// The layer rule (README "Layout"), checked from the imports by dependency-cruiser; the unit
// suite runs it (test/layers.test.ts) and fails on any violation. Each layer imports only the
// layers below it (and its own); no import circles anywhere. Type-only imports count too: a
// type from above is a dependency on above.
const L0 = '^src/util/';
const L1 = '^(src/store/|src/config/|cri-api/)';
const L2 = '^(src/agent/|src/vm/|src/image/|network/|storage/)';
const L3 = '^src/runtime/';
const L4 = '^(src/cri/|src/streaming/)';
const L5 = '^(src/server\\.ts|src/daemon\\.ts|src/cli/|src/metrics/)';

const forbid = (name, comment, from, to) => ({ name, comment, severity: 'error', from: { path: from }, to: { path: to } });

module.exports = {
  forbidden: [
    { name: 'no-circular', comment: 'modules may not import each other, directly or around a circle', severity: 'error', from: {}, to: { circular: true } },
    forbid('ground-floor', 'src/util/ imports nothing of podvisor above it', L0, `${L1}|${L2}|${L3}|${L4}|${L5}`),
    forbid('layer-1', 'store, config and the CRI API import only the ground floor', L1, `${L2}|${L3}|${L4}|${L5}`),
    forbid('layer-2', 'agent, vm, image, network and storage never import the runtime or anything above it', L2, `${L3}|${L4}|${L5}`),
    forbid('network-storage', 'network/ and storage/ import only the ground floor (and themselves)', '^(network|storage)/', `^(src/(?!util/)|cri-api/)`),
    forbid('network-not-storage', 'network/ does not import storage/', '^network/', '^storage/'),
    forbid('storage-not-network', 'storage/ does not import network/', '^storage/', '^network/'),
    forbid('agent-alone', 'the typed guest API knows nothing of VMs, images or storage', '^src/agent/', '^(src/vm/|src/image/|network/|storage/)'),
    forbid('image-alone', 'images know nothing of VMs, agents, networks or storage', '^src/image/', '^(src/vm/|src/agent/|network/|storage/)'),
    forbid('vm-alone', 'the VM layer knows nothing of images and storage', '^src/vm/', '^(src/image/|storage/)'),
    forbid('layer-3', 'the runtime never imports the gRPC adapters, streaming or the daemon', L3, `${L4}|${L5}`),
    forbid('layer-4', 'cri/ and streaming/ never import the server, daemon or CLI', L4, L5),
    forbid('pods-through-backend', 'the runtime outside its backends, cri/ and streaming/ talk to pods, never to a VM or an agent connection (the sandbox record keeps the VM backend\'s state: records.ts)', '^(src/runtime/(?!backends/|records\\.ts)|src/cri/|src/streaming/)', '^(src/vm/|src/agent/client|src/agent/hello)'),
    forbid('qemu-in-vm-backend', 'QEMU types stay in src/vm/ and the VM pod backend', '^(src/(?!vm/|runtime/backends/vm/|daemon\\.ts|cli/)|network/|storage/)', '^src/vm/(qemu|qmp)'),
  ],
  options: {
    includeOnly: '^(src/|network/|storage/|cri-api/)',
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '(^|/)node_modules/' },
  },
};
