// Three projects: fast unit tests; e2e tests that drive the real daemon with real VMs; the cluster
// e2e (e2e/cluster: a one-node Kubernetes on podvisor, driven through @kubernetes/client-node).
// Dependencies that ship only as ES modules (ESM_ONLY) are rewritten to CommonJS for jest:
// commander (the CLI), client-node and the ES-module-only packages it loads (cluster e2e).
const ESM_ONLY = ['commander', '@kubernetes/client-node', 'openid-client', 'oauth4webapi', 'jose', 'socks-proxy-agent', 'agent-base', '@jsep-plugin/assignment', '@jsep-plugin/regex'];
const common = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }],
    [`/node_modules/(${ESM_ONLY.join('|')})/.+\\.js$`]: '<rootDir>/test/support/esm-to-cjs.js',
  },
  transformIgnorePatterns: [`/node_modules/(?!(${ESM_ONLY.join('|')})/)`],
};
module.exports = {
  projects: [
    { ...common, displayName: 'unit', testMatch: ['<rootDir>/test/**/*.test.ts'] },
    { ...common, displayName: 'e2e', testMatch: ['<rootDir>/e2e/**/*.test.ts'], testPathIgnorePatterns: ['/node_modules/', '<rootDir>/e2e/cluster/'] },
    { ...common, displayName: 'cluster', testMatch: ['<rootDir>/e2e/cluster/**/*.test.ts'] },
  ],
};
