// The scale-out recipes: deploy/kubernetes/ (with its PROXY protocol overlay), the HAProxy of
// docker-compose.yml (deploy/haproxy/haproxy.cfg) and the compose Sentinel profile. Parsed with
// the `yaml` package and checked for consistency with each other and with SPEC §1: probe paths and
// ports, Service selectors and target ports, environment names, listener ports, the PROXY protocol
// on every path a client address must survive. The HAProxy configuration is checked by HAProxy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { BlockList } from 'node:net';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse, parseAllDocuments } from 'yaml';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const K8S = path.join(ROOT, 'deploy/kubernetes');

/** SPEC §1's environment variables, in its exact words. */
const SPEC_ENV = [
  'REDIS_URL', 'API_HOST', 'API_PORT', 'API_TOKEN', 'WORKER_ID', 'WORKER_PORT_OFFSET', 'WORKER_PROCESSES',
  'WORKER_MAX_STALE_SECONDS', 'SCHEDULER', 'CRL_FILE_ROOT', 'METRICS_PORT', 'REDIS_SENTINELS', 'REDIS_SENTINEL_MASTER',
  'REDIS_SENTINEL_PASSWORD',
];

// Loose shapes: the checks below assert what they use.
/* eslint-disable @typescript-eslint/no-explicit-any */
type Doc = Record<string, any>;

async function manifests(dir: string): Promise<Map<string, Doc[]>> {
  const files = new Map<string, Doc[]>();
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.yaml')).sort()) {
    const docs = parseAllDocuments(await readFile(path.join(dir, name), 'utf8'));
    for (const d of docs) assert.deepEqual(d.errors, [], `${name}: YAML errors`);
    files.set(name, docs.map((d) => d.toJS() as Doc));
  }
  return files;
}

/** The environment names documented in the README's table. */
async function readmeEnvNames(): Promise<Set<string>> {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const table = readme.slice(readme.indexOf('## Environment variables'));
  const names = new Set<string>();
  for (const line of table.split('\n').slice(1)) {
    if (line.startsWith('## ')) break;
    const first = /^\| ([^|]+) \|/.exec(line)?.[1] ?? '';
    for (const m of first.matchAll(/`([A-Z][A-Z0-9_]+)`/g)) names.add(m[1]!);
  }
  assert.ok(names.has('REDIS_URL') && names.size > 10, `README environment table found: ${[...names].join(' ')}`);
  return names;
}

const byKind = (files: Map<string, Doc[]>, kind: string) => [...files.values()].flat().filter((d) => d.kind === kind);
const one = (docs: Doc[], name: string): Doc => {
  const found = docs.filter((d) => d.metadata?.name === name);
  assert.equal(found.length, 1, `exactly one ${docs[0]?.kind ?? 'resource'} named ${name}`);
  return found[0]!;
};

function containerPort(container: Doc, port: string | number): number {
  if (typeof port === 'number') return port;
  const found = (container.ports ?? []).find((p: Doc) => p.name === port);
  assert.ok(found, `container ${container.name} has a port named ${port}`);
  return found.containerPort;
}

test('deploy/kubernetes: every manifest parses, and kustomization.yaml lists each of them', async () => {
  const files = await manifests(K8S);
  for (const [file, docs] of files) {
    for (const d of docs) {
      assert.ok(d.apiVersion && d.kind, `${file}: apiVersion and kind`);
      if (d.kind !== 'Kustomization') assert.match(d.metadata?.name ?? '', /^certgate-[a-z-]+$/, `${file}: a certgate- name`);
    }
  }
  const kustomization = files.get('kustomization.yaml')![0]!;
  assert.deepEqual([...kustomization.resources].sort(), [...files.keys()].filter((f) => f !== 'kustomization.yaml').sort());
  for (const kind of ['Deployment', 'Service', 'ConfigMap', 'Secret', 'HorizontalPodAutoscaler']) {
    assert.ok(byKind(files, kind).length > 0, `a ${kind}`);
  }
});

test('deploy/kubernetes: probes on /health of the right ports, Services reach named container ports, env names are SPEC §1', async () => {
  const files = await manifests(K8S);
  const config = one(byKind(files, 'ConfigMap'), 'certgate-env').data as Record<string, string>;
  const secret = one(byKind(files, 'Secret'), 'certgate-secrets').stringData as Record<string, string>;
  const deployments = byKind(files, 'Deployment');
  const api = one(deployments, 'certgate-api');
  const worker = one(deployments, 'certgate-worker');
  const [apiContainer, workerContainer] = [api, worker].map((d) => {
    assert.equal(d.spec.template.spec.containers.length, 1, `${d.metadata.name}: one container`);
    return d.spec.template.spec.containers[0] as Doc;
  }) as [Doc, Doc];

  // Environment: every name the manifests set (or show commented out) is one certgate reads.
  const known = new Set([...SPEC_ENV, ...(await readmeEnvNames())]);
  const raw = await Promise.all(['configmap.yaml', 'secret.yaml'].map((f) => readFile(path.join(K8S, f), 'utf8')));
  const commented = raw.flatMap((text) => [...text.matchAll(/^\s*# ([A-Z][A-Z0-9_]+): /gm)].map((m) => m[1]!));
  assert.ok(commented.includes('REDIS_SENTINELS') && commented.includes('REDIS_SENTINEL_MASTER'), 'the Sentinel settings are shown');
  const set = [...Object.keys(config), ...Object.keys(secret), ...[apiContainer, workerContainer].flatMap((c) => (c.env ?? []).map((e: Doc) => e.name))];
  for (const name of [...set, ...commented]) assert.ok(known.has(name), `${name} is an environment variable of SPEC §1 or the README`);
  assert.ok(!('API_TOKEN' in config) && !('REDIS_URL' in config), 'the token and the Redis URL (it may carry a password) are in the Secret');
  assert.ok(secret.API_TOKEN && secret.REDIS_URL);
  for (const c of [apiContainer, workerContainer]) {
    const refs = (c.envFrom ?? []).map((r: Doc) => r.configMapRef?.name ?? r.secretRef?.name);
    assert.deepEqual(refs, ['certgate-env', 'certgate-secrets'], `${c.name} reads the ConfigMap and the Secret`);
  }
  assert.equal(config.METRICS_HOST, '0.0.0.0', 'the kubelet reaches the metrics port (probes)');
  assert.equal(config.API_HOST, '0.0.0.0');
  assert.deepEqual(workerContainer.env.find((e: Doc) => e.name === 'WORKER_ID')?.valueFrom, { fieldRef: { fieldPath: 'metadata.name' } });

  // Images and commands: one image, the worker runs start:worker.
  assert.equal(apiContainer.image, workerContainer.image);
  assert.equal(apiContainer.command, undefined, 'the API uses the image default command');
  assert.deepEqual(workerContainer.command, ['npm', 'run', 'start:worker']);

  // Probes: GET /health on the metrics port (worker, SPEC §1 "Worker health") and on API_PORT (API).
  const metricsPort = Number(config.METRICS_PORT ?? 9465);
  for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    const p = workerContainer[probe];
    assert.equal(p?.httpGet?.path, '/health', `worker ${probe} path`);
    assert.equal(containerPort(workerContainer, p.httpGet.port), metricsPort, `worker ${probe} on METRICS_PORT`);
  }
  assert.ok(workerContainer.livenessProbe.periodSeconds * workerContainer.livenessProbe.failureThreshold
    > workerContainer.readinessProbe.periodSeconds * workerContainer.readinessProbe.failureThreshold, 'liveness gives up after readiness');
  for (const probe of ['readinessProbe', 'livenessProbe']) {
    const p = apiContainer[probe];
    assert.equal(p?.httpGet?.path, '/health', `api ${probe} path`);
    assert.equal(containerPort(apiContainer, p.httpGet.port), Number(config.API_PORT), `api ${probe} on API_PORT`);
  }
  // SIGTERM drains for up to 30 s (SPEC §1): the pod must be given longer.
  for (const d of [api, worker]) assert.ok(d.spec.template.spec.terminationGracePeriodSeconds > 30, `${d.metadata.name}: grace period over 30 s`);

  // Services: selectors pick exactly one Deployment's pods, and target ports exist there.
  for (const service of byKind(files, 'Service')) {
    const selector = service.spec.selector as Record<string, string>;
    const targets = deployments.filter((d) => Object.entries(selector).every(([k, v]) => d.spec.template.metadata.labels[k] === v));
    assert.equal(targets.length, 1, `${service.metadata.name} selects one Deployment`);
    const target = targets[0]!;
    assert.deepEqual(target.spec.selector.matchLabels, target.spec.template.metadata.labels, `${target.metadata.name}: selector = pod labels`);
    for (const port of service.spec.ports) containerPort(target.spec.template.spec.containers[0], port.targetPort);
  }

  // Autoscaling: the HPA scales the worker Deployment on CPU, which needs a CPU request.
  const hpa = one(byKind(files, 'HorizontalPodAutoscaler'), 'certgate-worker');
  assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: 'certgate-worker' });
  assert.ok(workerContainer.resources?.requests?.cpu, 'worker CPU request (the HPA target is a share of it)');
  assert.ok(hpa.spec.minReplicas >= 2 && hpa.spec.minReplicas <= hpa.spec.maxReplicas);
  const pdb = one(byKind(files, 'PodDisruptionBudget'), 'certgate-worker');
  assert.ok(pdb.spec.minAvailable < hpa.spec.minReplicas, 'a node drain can move a worker');
  assert.deepEqual(pdb.spec.selector.matchLabels, worker.spec.selector.matchLabels);
});

test('deploy/kubernetes: the SMTP Service keeps client addresses, or the overlay switches to the PROXY protocol', async () => {
  const base = await manifests(K8S);
  const smtp = one(byKind(base, 'Service'), 'certgate-smtp');
  assert.equal(smtp.spec.type, 'LoadBalancer');
  assert.equal(smtp.spec.externalTrafficPolicy, 'Local', 'no source NAT: the worker sees the client address');
  assert.deepEqual(smtp.spec.ports.map((p: Doc) => p.port).sort(), [465, 587]);

  const overlayDir = path.join(K8S, 'proxy-protocol');
  const overlay = await manifests(overlayDir);
  const kustomization = overlay.get('kustomization.yaml')![0]!;
  assert.deepEqual(kustomization.resources, ['../']);
  for (const { path: patchFile } of kustomization.patches) {
    const [patch] = overlay.get(patchFile)!;
    assert.ok(patch, `${patchFile} exists`);
    const target = one(byKind(base, patch.kind), patch.metadata.name);
    assert.equal(patch.apiVersion, target.apiVersion, `${patchFile} patches ${patch.kind}/${patch.metadata.name} of the base`);
  }
  const patched = overlay.get(kustomization.patches[0].path)![0]!;
  assert.equal(patched.metadata.name, 'certgate-smtp');
  assert.equal(patched.metadata.annotations['service.beta.kubernetes.io/aws-load-balancer-proxy-protocol'], '*');
  assert.equal(patched.spec.externalTrafficPolicy, 'Cluster', 'the address travels in the header');
  assert.match(await readFile(path.join(overlayDir, 'kustomization.yaml'), 'utf8'), /"proxyProtocol": \{ "trustedProxies"/, 'says what the listeners need');
});

test('docker-compose.yml + deploy/haproxy/haproxy.cfg: HAProxy accepts its configuration and sends PROXY v2 to the workers\' listener ports', async () => {
  const compose = parse(await readFile(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as Doc;
  const haproxy = compose.services.haproxy as Doc;
  const worker = compose.services.worker as Doc;
  const volume = (haproxy.volumes as string[]).find((v) => v.includes('haproxy.cfg'))!;
  const cfgPath = path.join(ROOT, volume.split(':')[0]!);
  const cfg = await readFile(cfgPath, 'utf8');

  // The real HAProxy validates the file (the same major version family as the image's).
  const checked = await run('haproxy', ['-c', '-f', cfgPath]).then((r) => r.stdout + r.stderr, (e: { stdout?: string; stderr?: string; message: string }) => {
    throw new Error(`haproxy -c refused ${cfgPath}: ${e.stderr ?? e.message}`);
  });
  assert.match(checked, /Configuration file is valid/);

  // Frontends publish 587/465; every backend server sends PROXY v2 to a worker listener port and is
  // checked on the worker's /health (the metrics port, so the check itself carries no header).
  const binds = [...cfg.matchAll(/^\s*bind :(\d+)$/gm)].map((m) => Number(m[1]));
  assert.deepEqual(binds.sort(), [465, 587]);
  assert.deepEqual((haproxy.ports as string[]).map((p) => Number(p.split(':').pop())).sort(), [465, 587]);
  const backends = cfg.split(/^backend /m).slice(1);
  assert.equal(backends.length, 2);
  const workerMetricsPort = Number(worker.environment.METRICS_PORT);
  const listenerPorts: number[] = [];
  for (const backend of backends) {
    assert.match(backend, /^\s*default-server .*\bsend-proxy-v2\b/m, 'send-proxy-v2');
    assert.match(backend, new RegExp(`^\\s*default-server .*\\bcheck port ${workerMetricsPort}\\b`, 'm'), 'checked on the metrics port');
    assert.match(backend, /^\s*option httpchk GET \/health$/m);
    const server = /^\s*server-template \S+ \S+ worker:(\d+)$/m.exec(backend);
    assert.ok(server, 'servers found by the compose service name "worker" (it scales)');
    listenerPorts.push(Number(server[1]));
  }
  // The same listener ports as the Kubernetes worker's container ports.
  const k8sWorker = one(byKind(await manifests(K8S), 'Deployment'), 'certgate-worker').spec.template.spec.containers[0];
  assert.deepEqual(listenerPorts.sort(), k8sWorker.ports.filter((p: Doc) => p.name !== 'metrics').map((p: Doc) => p.containerPort).sort());
  assert.match(worker.healthcheck.test.join(' '), /9465\/health/, 'compose checks the worker on /health too');

  // HAProxy has a fixed address on a network it shares with the workers; the documented trustedProxies is that address.
  const defaultOf = (v: string) => /^\$\{[A-Z_]+:-(.+)\}$/.exec(v)?.[1] ?? v;
  const address = defaultOf(haproxy.networks['smtp-edge'].ipv4_address);
  const subnet = defaultOf(compose.networks['smtp-edge'].ipam.config[0].subnet);
  const edge = new BlockList();
  edge.addSubnet(subnet.split('/')[0]!, Number(subnet.split('/')[1]));
  assert.ok(edge.check(address), `${address} in ${subnet}`);
  assert.ok(worker.networks.includes('smtp-edge'), 'workers are on the HAProxy network');
  for (const text of [cfg, await readFile(path.join(ROOT, 'docker-compose.yml'), 'utf8')]) {
    assert.ok(text.includes(`"trustedProxies": ["${address}"]`), 'the listener setting to use is spelled out');
  }
});

test('docker-compose.yml: the sentinel profile is a master, a replica and three sentinels agreeing on one master name', async () => {
  const compose = parse(await readFile(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as Doc;
  const services = compose.services as Record<string, Doc>;
  const inProfile = Object.keys(services).filter((n) => services[n]!.profiles?.includes('sentinel')).sort();
  assert.deepEqual(inProfile, ['redis-replica', 'sentinel-1', 'sentinel-2', 'sentinel-3']);
  for (const [name, s] of Object.entries(services)) {
    if (!inProfile.includes(name)) assert.equal(s.profiles, undefined, `${name} runs without a profile`);
  }
  assert.match(services['redis-replica']!.command.join(' '), /--replicaof redis 6379/);
  const monitors = inProfile.filter((n) => n.startsWith('sentinel-')).map((n) => {
    const script = services[n]!.command.join(' ');
    const m = /'sentinel monitor (\S+) (\S+) (\d+) (\d+)'/.exec(script);
    assert.ok(m, `${n} monitors a master`);
    assert.ok(script.indexOf('resolve-hostnames yes') < script.indexOf('sentinel monitor'), `${n}: hostnames resolve before the monitor line`);
    return { master: m[1]!, host: m[2]!, quorum: Number(m[4]) };
  });
  assert.equal(new Set(monitors.map((m) => JSON.stringify(m))).size, 1, 'all sentinels watch the same master');
  const [{ master, host, quorum }] = monitors as [{ master: string; host: string; quorum: number }];
  assert.ok(host in services, `the master ${host} is a service`);
  assert.ok(quorum > monitors.length / 2 && quorum <= monitors.length, 'a majority quorum');
  // api and worker take the Sentinel settings from the environment; empty (the default) means REDIS_URL alone.
  for (const name of ['api', 'worker']) {
    assert.equal(services[name]!.environment.REDIS_SENTINELS, '${REDIS_SENTINELS:-}');
    assert.equal(services[name]!.environment.REDIS_SENTINEL_MASTER, '${REDIS_SENTINEL_MASTER:-}');
  }
  const text = await readFile(path.join(ROOT, 'docker-compose.yml'), 'utf8');
  assert.ok(text.includes(`REDIS_SENTINEL_MASTER=${master}`), 'the master name to set is spelled out');
  assert.ok(text.includes('REDIS_SENTINELS=sentinel-1:26379,sentinel-2:26379,sentinel-3:26379'));
});
