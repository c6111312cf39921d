// Certificates and keys of one test cluster, made fresh for each run with the openssl CLI (Node's
// crypto signs but cannot issue X.509 certificates). One CA signs everything: the API server's and
// kubelet's serving certificates and each component's client certificate (identity = CN, groups =
// O, as Kubernetes' x509 authenticator reads them). EC P-256 keys: fast to make, accepted by all.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface CertPair {
  cert: string;
  key: string;
}

export interface ClusterPki {
  dir: string;
  ca: CertPair;
  apiserver: CertPair;
  /** the API server's client certificate towards kubelet */
  apiserverKubelet: CertPair;
  admin: CertPair;
  controllerManager: CertPair;
  scheduler: CertPair;
  /** kubelet's client certificate (system:node:<node>) */
  kubelet: CertPair;
  /** kubelet's serving certificate (the node address) */
  kubeletServing: CertPair;
  /** service-account token signing key (private) and its public half */
  saKey: string;
  saPub: string;
}

const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });

function newKey(file: string): void {
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', file]);
}

/** A leaf certificate signed by the CA: client and/or server use, with the given subject and SANs. */
function issue(dir: string, name: string, ca: CertPair, subject: string, usage: 'client' | 'server' | 'both', sans: string[] = []): CertPair {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.crt`);
  const csr = path.join(dir, `${name}.csr`);
  const ext = path.join(dir, `${name}.ext`);
  newKey(key);
  openssl(['req', '-new', '-key', key, '-subj', subject, '-out', csr]);
  const eku = usage === 'both' ? 'serverAuth,clientAuth' : usage === 'server' ? 'serverAuth' : 'clientAuth';
  fs.writeFileSync(ext, [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    `extendedKeyUsage=${eku}`,
    ...(sans.length ? [`subjectAltName=${sans.join(',')}`] : []),
  ].join('\n') + '\n');
  openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '2', '-sha256', '-extfile', ext, '-out', cert]);
  fs.rmSync(csr);
  fs.rmSync(ext);
  return { cert, key };
}

/** Makes every certificate the cluster needs under `dir` (mode 0700). */
export function makePki(dir: string, opts: { nodeName: string; nodeIp: string; serviceIp: string }): ClusterPki {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const ca = { cert: path.join(dir, 'ca.crt'), key: path.join(dir, 'ca.key') };
  newKey(ca.key);
  openssl(['req', '-x509', '-new', '-key', ca.key, '-subj', '/CN=podvisor-e2e-ca', '-days', '2', '-sha256', '-out', ca.cert,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature']);
  const apiSans = ['IP:127.0.0.1', `IP:${opts.nodeIp}`, `IP:${opts.serviceIp}`, 'DNS:localhost', 'DNS:kubernetes', 'DNS:kubernetes.default', 'DNS:kubernetes.default.svc', 'DNS:kubernetes.default.svc.cluster.local'];
  const saKey = path.join(dir, 'sa.key');
  const saPub = path.join(dir, 'sa.pub');
  openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', saKey]);
  openssl(['pkey', '-in', saKey, '-pubout', '-out', saPub]);
  return {
    dir,
    ca,
    apiserver: issue(dir, 'apiserver', ca, '/CN=kube-apiserver', 'server', apiSans),
    apiserverKubelet: issue(dir, 'apiserver-kubelet-client', ca, '/O=system:masters/CN=kube-apiserver-kubelet-client', 'client'),
    admin: issue(dir, 'admin', ca, '/O=system:masters/CN=podvisor-e2e-admin', 'client'),
    controllerManager: issue(dir, 'controller-manager', ca, '/CN=system:kube-controller-manager', 'client'),
    scheduler: issue(dir, 'scheduler', ca, '/CN=system:kube-scheduler', 'client'),
    kubelet: issue(dir, 'kubelet', ca, `/O=system:nodes/CN=system:node:${opts.nodeName}`, 'client'),
    kubeletServing: issue(dir, 'kubelet-serving', ca, `/CN=${opts.nodeName}`, 'server', [`IP:${opts.nodeIp}`, 'IP:127.0.0.1', `DNS:${opts.nodeName}`]),
    saKey,
    saPub,
  };
}

/** A kubeconfig file for `user` (client certificate embedded) against the API server at `server`. */
export function writeKubeconfig(file: string, server: string, ca: string, user: CertPair, name: string): void {
  const b64 = (f: string) => fs.readFileSync(f).toString('base64');
  fs.writeFileSync(file, `apiVersion: v1
kind: Config
clusters:
- name: podvisor-e2e
  cluster:
    server: ${server}
    certificate-authority-data: ${b64(ca)}
users:
- name: ${name}
  user:
    client-certificate-data: ${b64(user.cert)}
    client-key-data: ${b64(user.key)}
contexts:
- name: ${name}@podvisor-e2e
  context: { cluster: podvisor-e2e, user: ${name} }
current-context: ${name}@podvisor-e2e
`, { mode: 0o600 });
}
