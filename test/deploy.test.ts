/**
 * The packaging, checked as far as a machine without a Docker engine or a
 * cluster allows: every manifest in deploy/ parses and validates against its
 * Kubernetes (or prometheus-operator) schema, with no unknown field; the
 * Dockerfile passes dockerfile-utils' validator; and the pieces agree with
 * the gateway and with each other (probe paths and ports, the drain budget,
 * where homes.root lives, the user, tini, metric names in alert rules).
 */
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { DockerfileParser } from 'dockerfile-ast';
import type { Copy, Instruction } from 'dockerfile-ast';
import { validate as validateDockerfile } from 'dockerfile-utils';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { PersistentVolumeClaim } from 'kubernetes-models/v1/PersistentVolumeClaim';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec';
import { parse as parseToml } from 'smol-toml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { GatewayMetrics } from '../src/main/metrics.js';
import { loadSettings } from '../src/main/settings/load.js';
import { SETTINGS, envName } from '../src/main/settings/spec.js';
import type { Settings } from '../src/main/settings/load.js';
import { REPO_ROOT, typecheckSnippets } from '../scripts/typecheck-snippets.js';
import { testTempRoot } from './temp-root.js';

const DEPLOY = path.join(REPO_ROOT, 'deploy');
/** The several-replica variant: a StatefulSet, its headless Service, HAProxy, and an etcd. */
const VARIANT = 'deploy/kubernetes';
const IMAGE_DATA_DIR = '/var/lib/codex-app-gateway';

interface Manifest {
  /** Relative to the repository, e.g. deploy/deployment.yaml. */
  file: string;
  doc: Record<string, unknown> & { apiVersion?: string; kind?: string; metadata?: { name?: string; namespace?: string } };
}

/** A model validates with ajv against the generated schema; `type` names its TypeScript interface for the unknown-field check. */
interface ModelRef {
  create: (data: never) => { validate(): void };
  module: string;
  iface: string;
}

const MODELS: Record<string, ModelRef> = {
  'apps/v1/Deployment': { create: (d) => new Deployment(d), module: 'kubernetes-models/apps/v1/Deployment', iface: 'IDeployment' },
  'apps/v1/StatefulSet': { create: (d) => new StatefulSet(d), module: 'kubernetes-models/apps/v1/StatefulSet', iface: 'IStatefulSet' },
  'v1/ConfigMap': { create: (d) => new ConfigMap(d), module: 'kubernetes-models/v1/ConfigMap', iface: 'IConfigMap' },
  'v1/PersistentVolumeClaim': { create: (d) => new PersistentVolumeClaim(d), module: 'kubernetes-models/v1/PersistentVolumeClaim', iface: 'IPersistentVolumeClaim' },
  'v1/Secret': { create: (d) => new Secret(d), module: 'kubernetes-models/v1/Secret', iface: 'ISecret' },
  'v1/Service': { create: (d) => new Service(d), module: 'kubernetes-models/v1/Service', iface: 'IService' },
  'v1/ServiceAccount': { create: (d) => new ServiceAccount(d), module: 'kubernetes-models/v1/ServiceAccount', iface: 'IServiceAccount' },
  'monitoring.coreos.com/v1/ServiceMonitor': {
    create: (d) => new ServiceMonitor(d),
    module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor',
    iface: 'IServiceMonitor',
  },
  'monitoring.coreos.com/v1/PrometheusRule': {
    create: (d) => new PrometheusRule(d),
    module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule',
    iface: 'IPrometheusRule',
  },
};
const KUSTOMIZATION = 'kustomize.config.k8s.io/v1beta1/Kustomization';

async function yamlFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await yamlFiles(p)));
    else if (/\.ya?ml$/.test(e.name)) out.push(p);
  }
  return out.sort();
}

async function loadManifests(): Promise<Manifest[]> {
  const out: Manifest[] = [];
  for (const abs of await yamlFiles(DEPLOY)) {
    const file = path.relative(REPO_ROOT, abs);
    const docs = parseAllDocuments(await readFile(abs, 'utf8'), { prettyErrors: true });
    for (const d of Array.isArray(docs) ? docs : [docs]) {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`);
      if (d.warnings.length > 0) throw new Error(`${file}: ${d.warnings.map((e) => e.message).join('; ')}`);
      const doc = d.toJS() as Manifest['doc'] | null;
      if (doc !== null) out.push({ file, doc });
    }
  }
  return out;
}

function typeKey(m: Manifest): string {
  return `${m.doc.apiVersion ?? '?'}/${m.doc.kind ?? '?'}`;
}

function one(manifests: Manifest[], kind: string, name?: string): Manifest {
  const found = manifests.filter((m) => m.doc.kind === kind && (name === undefined || m.doc.metadata?.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name === undefined ? '' : ` ${name}`} in deploy/, found ${found.length}`);
  return found[0] as Manifest;
}

// ---- the Dockerfile, as stages --------------------------------------------------

interface Stage {
  name: string | undefined;
  image: string;
  instructions: Instruction[];
}

function dockerStages(text: string): { stages: Stage[]; args: Map<string, string> } {
  const df = DockerfileParser.parse(text);
  const args = new Map<string, string>();
  for (const a of df.getInitialARGs()) {
    const p = a.getProperty();
    if (p !== null) args.set(p.getName(), p.getValue() ?? '');
  }
  const stages: Stage[] = [];
  for (const ins of df.getInstructions()) {
    if (ins.getKeyword() === 'FROM') {
      const words = (ins.getArgumentsContent() ?? '').split(/\s+/);
      const image = (words[0] ?? '').replace(/^\$\{?(\w+)\}?$/, (_m, v: string) => args.get(v) ?? '');
      const as = words.findIndex((w) => w.toUpperCase() === 'AS');
      stages.push({ name: as >= 0 ? words[as + 1] : undefined, image, instructions: [] });
    } else {
      stages.at(-1)?.instructions.push(ins);
    }
  }
  return { stages, args };
}

function instructions(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((i) => i.getKeyword() === keyword);
}

/** The stage a COPY takes its files from (`--from=`), or undefined for the build context. */
function copyFrom(ins: Instruction): string | undefined {
  return (ins as Copy).getFromFlag()?.getValue() ?? undefined;
}

/** `["a", "b"]` exec form as an array of strings. */
function execForm(ins: Instruction): string[] {
  return JSON.parse(ins.getArgumentsContent() ?? 'null') as string[];
}

/** ENV of a stage: `ENV A=1 B=2` (continuation lines included). */
function stageEnv(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const ins of instructions(stage, 'ENV')) {
    const content = (ins.getArgumentsContent() ?? '').replace(/\\\s*\n/g, ' ');
    for (const m of content.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)/g)) env[m[1] as string] = (m[2] as string).replace(/^"|"$/g, '');
  }
  return env;
}

// ---- the pod as the gateway sees it -------------------------------------------

interface Wiring {
  manifests: Manifest[];
  /** Those of the one-replica deployment (deploy/ without deploy/kubernetes/). */
  base: Manifest[];
  pod: IPodSpec;
  container: IContainer;
  /** The gateway's environment in the container: image ENV, then the pod's env (secrets from the example Secret). */
  env: Record<string, string>;
  settings: Settings;
  toml: Record<string, unknown>;
  runtime: Stage;
  secretExample: Record<string, string>;
}

let scratch: string;
let wiring: Wiring;

/**
 * The gateway container of `pod` as it starts: its environment (the image's
 * ENV, then the pod's env, secrets from the example Secret, `$(VAR)`
 * references expanded as the kubelet does, the pod's own fields from
 * `fields`), the ConfigMap file CXG_CONFIG names, and the settings the real
 * loader makes of them.
 */
async function gatewayIn(manifests: Manifest[], pod: IPodSpec, secretExample: Record<string, string>, runtime: Stage, label: string, fields: Record<string, string> = {}, unset: string[] = []): Promise<{ container: IContainer; env: Record<string, string>; settings: Settings; toml: Record<string, unknown> }> {
  const container = pod.containers[0] as IContainer;
  // The ConfigMap's file, where CXG_CONFIG says the container finds it.
  const configMount = container.volumeMounts?.find((m) => {
    const v = pod.volumes?.find((x) => x.name === m.name);
    return v?.configMap !== undefined;
  });
  const configVolume = pod.volumes?.find((v) => v.name === configMount?.name);
  const configMap = one(manifests, 'ConfigMap', configVolume?.configMap?.name).doc as { data: Record<string, string> };
  const env: Record<string, string> = { ...stageEnv(runtime) };
  const localConfig: Record<string, string> = {};
  for (const [key, text] of Object.entries(configMap.data)) {
    const local = path.join(scratch, `${label}-${key}`);
    await writeFile(local, text);
    localConfig[path.posix.join(configMount?.mountPath ?? '/nonexistent', key)] = local;
  }
  for (const e of container.env ?? []) {
    if (e.value !== undefined) {
      const value = e.value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (ref, name: string) => env[name] ?? ref);
      env[e.name] = localConfig[value] ?? value;
    } else if (e.valueFrom?.secretKeyRef !== undefined) {
      const v = secretExample[e.valueFrom.secretKeyRef.key];
      if (v !== undefined) env[e.name] = v;
    } else if (e.valueFrom?.fieldRef !== undefined) {
      const v = fields[e.valueFrom.fieldRef.fieldPath];
      if (v !== undefined) env[e.name] = v;
    }
  }
  for (const name of unset) delete env[name];
  const configPath = env.CXG_CONFIG;
  if (configPath === undefined) throw new Error('the container sets no CXG_CONFIG');
  const toml = parseToml(await readFile(configPath, 'utf8'));
  // The image's WORKDIR is the working directory relative paths resolve against.
  const workdir = instructions(runtime, 'WORKDIR').at(-1)?.getArgumentsContent() ?? '/';
  const settings = await loadSettings({ env, cwd: workdir }).catch((err: unknown) => {
    throw new Error(`the ConfigMap's ${path.basename(configPath)}, with the image's and the pod's environment, is not a valid configuration: ${err instanceof Error ? err.message : String(err)}`);
  });
  return { container, env, settings, toml };
}

beforeAll(async () => {
  await mkdir(testTempRoot(), { recursive: true });
  scratch = await mkdtemp(path.join(testTempRoot(), 'deploy-'));

  const manifests = await loadManifests();
  // The one-replica manifests; deploy/kubernetes/ (several replicas) has its own checks below.
  const base = manifests.filter((m) => !m.file.startsWith(`${VARIANT}/`));
  const deployment = one(base, 'Deployment').doc as { spec: { template: { spec: IPodSpec } } };
  const pod = deployment.spec.template.spec;
  const secretExample = (one(base, 'Secret').doc as { stringData: Record<string, string> }).stringData;
  const { stages } = dockerStages(await readFile(path.join(REPO_ROOT, 'Dockerfile'), 'utf8'));
  const runtime = stages.at(-1) as Stage;

  const { container, env, settings, toml } = await gatewayIn(base, pod, secretExample, runtime, 'base');
  wiring = { manifests, base, pod, container, env, settings, toml, runtime, secretExample };
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('deploy/ manifests', () => {
  it('every YAML document parses and is a kind this test knows', () => {
    expect(wiring.manifests.length).toBeGreaterThan(5);
    const unknown = wiring.manifests.filter((m) => MODELS[typeKey(m)] === undefined && typeKey(m) !== KUSTOMIZATION);
    expect(unknown.map((m) => `${m.file}: ${typeKey(m)}`)).toEqual([]);
  });

  it('every object validates against its schema', () => {
    const problems: string[] = [];
    for (const m of wiring.manifests) {
      const model = MODELS[typeKey(m)];
      if (model === undefined) continue;
      try {
        model.create(m.doc as never).validate();
      } catch (err) {
        problems.push(`${m.file} ${m.doc.kind}/${m.doc.metadata?.name}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('no object has a field its schema does not know (a misspelt field fails)', () => {
    const snippets = new Map<string, string>();
    for (const [i, m] of wiring.manifests.entries()) {
      const model = MODELS[typeKey(m)];
      if (model === undefined) continue;
      snippets.set(`${m.file} ${m.doc.kind}/${m.doc.metadata?.name}`, `import type { ${model.iface} } from '${model.module}';\nexport const doc${i}: ${model.iface} = ${JSON.stringify(m.doc, null, 2)};\n`);
    }
    // The check itself must catch a typo, or passing proves nothing.
    snippets.set('self-test', `import type { IContainer } from 'kubernetes-models/v1/Container';\nexport const c: IContainer = { name: 'x', readinessProbee: {} };\n`);
    const problems = typecheckSnippets(snippets);
    expect(problems.filter((p) => p.snippet === 'self-test').map((p) => p.message).join('\n')).toMatch(/readinessProbee/);
    expect(problems.filter((p) => p.snippet !== 'self-test').map((p) => `${p.snippet} at ${p.path.join('.')}: ${p.message}`)).toEqual([]);
  }, 60_000);

  it('objects name no namespace (kubectl -n or the kustomization decides)', () => {
    expect(wiring.manifests.filter((m) => m.doc.metadata?.namespace !== undefined).map((m) => m.file)).toEqual([]);
  });

  it('each kustomization lists every manifest beside it except examples', async () => {
    const kustomizations = wiring.manifests.filter((m) => typeKey(m) === KUSTOMIZATION);
    expect(kustomizations.map((k) => k.file).sort()).toEqual(['deploy/kubernetes/etcd/kustomization.yaml', 'deploy/kubernetes/kustomization.yaml', 'deploy/kustomization.yaml', 'deploy/monitoring/kustomization.yaml']);
    for (const k of kustomizations) {
      const dir = path.dirname(path.join(REPO_ROOT, k.file));
      const listed = (k.doc.resources as string[]).map((r) => path.join(dir, r));
      const beside = (await readdir(dir)).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml' && !f.includes('.example.')).map((f) => path.join(dir, f));
      expect(listed.sort(), k.file).toEqual(beside.sort());
    }
    // Examples hold placeholders: never applied by -k.
    const root = kustomizations.find((k) => k.file === 'deploy/kustomization.yaml');
    expect(root?.doc.resources).not.toContain('secret.example.yaml');
  });

  // Not skipped without kubectl: a skipped check proves nothing. .ci/run installs
  // Debian's kubernetes-client (kubectl 1.20, whose kustomize renders these) when
  // the machine has no kubectl; elsewhere, install it to run the suite.
  it('kubectl kustomize renders every listed object', async () => {
    const kubectl = process.env.PATH?.split(path.delimiter).some((d) => d !== '' && isFile(path.join(d, 'kubectl'))) === true;
    expect(kubectl, 'kubectl on PATH (apt-get install kubernetes-client; .ci/run does)').toBe(true);
    for (const dir of ['deploy', 'deploy/monitoring', VARIANT, `${VARIANT}/etcd`]) {
      const { stdout } = await promisify(execFile)('kubectl', ['kustomize', dir], { cwd: REPO_ROOT });
      const rendered = parseAllDocuments(stdout).map((d) => d.toJS() as Manifest['doc']);
      const expected = wiring.manifests.filter((m) => path.dirname(m.file) === dir && typeKey(m) !== KUSTOMIZATION && !m.file.includes('.example.'));
      expect(rendered.map((d) => `${d.kind}/${d.metadata?.name}`).sort(), dir).toEqual(expected.map((m) => `${m.doc.kind}/${m.doc.metadata?.name}`).sort());
    }
  });
});

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

describe('deploy/ agrees with the gateway', () => {
  it('the ConfigMap\'s gateway.toml, with the image\'s and the pod\'s environment, loads through the real settings loader', () => {
    const s = wiring.settings;
    expect(s.listen.host).toBe('0.0.0.0');
    expect(s.store.url).toMatch(/^s3:\/\//);
    // Every CXG_* variable the pod sets is a setting the loader accepted (unknown ones throw above).
    expect(Object.keys(wiring.env).filter((k) => k.startsWith('CXG_')).sort()).toEqual(['CXG_ADMIN_TOKEN', 'CXG_AUTH_JWT_SECRET', 'CXG_CONFIG', 'CXG_DATA_DIR', 'CXG_LISTEN_HOST']);
    expect(s.admin.token).toBe(wiring.secretExample['admin-token']);
    expect(s.auth.jwt.secret).toBe(wiring.secretExample['jwt-secret']);
  });

  it('probes ask /readyz and /healthz on the port the gateway listens on', () => {
    const { container, settings } = wiring;
    const port = container.ports?.find((p) => p.name === 'http');
    expect(port?.containerPort).toBe(settings.listen.port);
    const portOf = (p: string | number | undefined): number | undefined => (typeof p === 'number' ? p : container.ports?.find((x) => x.name === p)?.containerPort);
    expect(container.readinessProbe?.httpGet?.path).toBe('/readyz');
    expect(portOf(container.readinessProbe?.httpGet?.port)).toBe(settings.listen.port);
    expect(container.livenessProbe?.httpGet?.path).toBe('/healthz');
    expect(portOf(container.livenessProbe?.httpGet?.port)).toBe(settings.listen.port);
    if (container.startupProbe !== undefined) {
      expect(container.startupProbe.httpGet?.path).toBe('/healthz');
      expect(portOf(container.startupProbe.httpGet?.port)).toBe(settings.listen.port);
    }
    // A liveness probe on /readyz would restart a draining gateway.
    expect(container.livenessProbe?.httpGet?.path).not.toBe('/readyz');
  });

  it('the Service, the ServiceMonitor and the scrape annotations reach the same port', () => {
    const svc = one(wiring.base, 'Service').doc as { spec: { selector: Record<string, string>; ports: Array<{ name: string; port: number; targetPort: string | number }> } };
    const http = svc.spec.ports.find((p) => p.name === 'http');
    expect(http?.targetPort).toBe('http');
    expect(http?.port).toBe(wiring.settings.listen.port);
    const deployment = one(wiring.base, 'Deployment').doc as { spec: { template: { metadata: { labels: Record<string, string>; annotations: Record<string, string> } } } };
    const labels = deployment.spec.template.metadata.labels;
    for (const [k, v] of Object.entries(svc.spec.selector)) expect(labels[k], `pod label ${k}`).toBe(v);
    const sm = one(wiring.base, 'ServiceMonitor').doc as { spec: { selector: { matchLabels: Record<string, string> }; endpoints: Array<{ port: string; path: string }> } };
    const svcLabels = (one(wiring.base, 'Service').doc.metadata as { labels: Record<string, string> }).labels;
    for (const [k, v] of Object.entries(sm.spec.selector.matchLabels)) expect(svcLabels[k], `Service label ${k}`).toBe(v);
    expect(sm.spec.endpoints.map((e) => [e.port, e.path])).toEqual([['http', '/metrics']]);
    const ann = deployment.spec.template.metadata.annotations;
    expect(ann['prometheus.io/scrape']).toBe('true');
    expect(ann['prometheus.io/port']).toBe(String(wiring.settings.listen.port));
    expect(ann['prometheus.io/path']).toBe('/metrics');
  });

  it('terminationGracePeriodSeconds leaves the drain its whole shutdown.budget, with margin', () => {
    const { pod, settings } = wiring;
    const graceMs = (pod.terminationGracePeriodSeconds ?? 30) * 1000;
    // The drain may take the budget, then flushes progress streams (≤ 1 s) and logs before exiting.
    expect(graceMs).toBeGreaterThanOrEqual(settings.shutdown.budgetMs + 10_000);
    expect(settings.shutdown.workspaceBudgetMs).toBeLessThanOrEqual(settings.shutdown.budgetMs);
    expect(settings.spawn.stopGraceMs).toBeLessThan(settings.shutdown.workspaceBudgetMs);
  });

  it('homes.root and data.dir are on the PersistentVolumeClaim, so the spool survives restarts', () => {
    const { pod, container, settings } = wiring;
    const mountOf = (p: string): { mountPath: string; volume: NonNullable<IPodSpec['volumes']>[number] | undefined } | undefined => {
      const mounts = (container.volumeMounts ?? []).filter((m) => p === m.mountPath || p.startsWith(`${m.mountPath.replace(/\/$/, '')}/`));
      const m = mounts.sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
      return m === undefined ? undefined : { mountPath: m.mountPath, volume: pod.volumes?.find((v) => v.name === m.name) };
    };
    const claims = wiring.base.filter((m) => m.doc.kind === 'PersistentVolumeClaim').map((m) => m.doc.metadata?.name);
    for (const dir of [settings.homes.root, settings.data.dir]) {
      const mount = mountOf(dir);
      expect(mount?.volume?.persistentVolumeClaim?.claimName, `${dir} is on a PVC`).toBeDefined();
      expect(claims).toContain(mount?.volume?.persistentVolumeClaim?.claimName);
      expect(container.volumeMounts?.find((m) => m.mountPath === mount?.mountPath)?.readOnly ?? false).toBe(false);
    }
    expect(settings.data.dir).toBe(IMAGE_DATA_DIR);
    // The root file system is read-only: the system temp directory needs a volume too.
    expect(container.securityContext?.readOnlyRootFilesystem).toBe(true);
    expect(mountOf('/tmp')?.volume?.emptyDir).toBeDefined();
  });

  it('one replica, replaced with Recreate: two gateways never share a homes.root', () => {
    const d = one(wiring.base, 'Deployment').doc as { spec: { replicas: number; strategy: { type: string } } };
    expect(d.spec.replicas).toBe(1);
    expect(d.spec.strategy.type).toBe('Recreate');
    const pvc = one(wiring.base, 'PersistentVolumeClaim').doc as { spec: { accessModes: string[] } };
    expect(pvc.spec.accessModes).toEqual(['ReadWriteOnce']);
  });

  it('runs as the image\'s non-root user, without privileges', () => {
    const { pod, container, runtime } = wiring;
    const [uid, gid] = (instructions(runtime, 'USER').at(-1)?.getArgumentsContent() ?? '').split(':').map(Number);
    expect(pod.securityContext?.runAsNonRoot).toBe(true);
    expect(pod.securityContext?.runAsUser).toBe(uid);
    expect(pod.securityContext?.runAsGroup).toBe(gid);
    expect(pod.securityContext?.fsGroup).toBe(gid);
    expect(container.securityContext?.allowPrivilegeEscalation).toBe(false);
    expect(container.securityContext?.capabilities?.drop).toEqual(['ALL']);
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.enableServiceLinks).toBe(false);
  });

  it('secrets come from one Secret whose example has every key, marked as a placeholder', () => {
    const { container, settings, secretExample } = wiring;
    const refs = (container.env ?? []).flatMap((e) => (e.valueFrom?.secretKeyRef === undefined ? [] : [{ env: e.name, ...e.valueFrom.secretKeyRef }]));
    const secretName = one(wiring.base, 'Secret').doc.metadata?.name;
    for (const r of refs) {
      expect(r.name, r.env).toBe(secretName);
      expect(Object.keys(secretExample), r.env).toContain(r.key);
    }
    for (const v of Object.values(secretExample)) expect(v).toMatch(/^REPLACE-ME/);
    // Never a literal value for a secret, and the model key the children get is among them.
    const fromSecret = new Set(refs.filter((r) => r.optional !== true).map((r) => r.env));
    for (const name of ['CXG_AUTH_JWT_SECRET', 'CXG_ADMIN_TOKEN', settings.model.apiKeyEnv]) expect(fromSecret, name).toContain(name);
  });

  it('the child-limit alert uses limits.max_children from the ConfigMap', () => {
    const rule = alertRules().find((r) => r.alert === 'CodexGatewayNearChildLimit');
    const m = /0\.9 \* (\d+)/.exec(rule?.expr ?? '');
    expect(Number(m?.[1])).toBe(wiring.settings.limits.maxChildren);
    expect((wiring.toml.limits as { max_children: number }).max_children).toBe(wiring.settings.limits.maxChildren);
  });

  it('alert rules use only metrics and labels the gateway exports', () => {
    const metrics = new GatewayMetrics();
    try {
      const known = new Map<string, { labels: string[]; type: string }>();
      for (const m of metrics.registry.getMetricsAsArray()) {
        known.set(m.name, { labels: [...((m as unknown as { labelNames?: string[] }).labelNames ?? [])], type: (m as unknown as { type: string }).type });
      }
      const external = new Set(['up', 'kube_pod_status_ready', 'kubelet_volume_stats_available_bytes', 'kubelet_volume_stats_capacity_bytes']);
      const problems: string[] = [];
      for (const r of alertRules()) {
        for (const sel of selectors(r.expr)) {
          if (external.has(sel.metric)) continue;
          const base = sel.metric.replace(/_(bucket|sum|count)$/, '');
          const info = known.get(sel.metric) ?? (known.get(base)?.type === 'histogram' ? known.get(base) : undefined);
          if (info === undefined || !sel.metric.startsWith('cxg_')) {
            problems.push(`${r.alert}: unknown metric ${sel.metric}`);
            continue;
          }
          const allowed = new Set([...info.labels, ...(sel.metric.endsWith('_bucket') ? ['le'] : [])]);
          for (const l of sel.labels) if (!allowed.has(l)) problems.push(`${r.alert}: ${sel.metric} has no label ${l}`);
        }
      }
      expect(problems).toEqual([]);
    } finally {
      metrics.close();
    }
  });

  it('every alert rule is explained in docs/operations.md', async () => {
    const ops = await readFile(path.join(REPO_ROOT, 'docs', 'operations.md'), 'utf8');
    expect(alertRules().map((r) => r.alert).filter((a) => !ops.includes(a))).toEqual([]);
  });
});

function alertRules(): Array<{ alert: string; expr: string }> {
  const rule = one(wiring.base, 'PrometheusRule').doc as { spec: { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> } };
  return rule.spec.groups.flatMap((g) => g.rules);
}

const PROMQL_WORDS = new Set(['sum', 'max', 'min', 'avg', 'count', 'by', 'without', 'rate', 'increase', 'irate', 'histogram_quantile', 'ignoring', 'on', 'group_left', 'group_right', 'and', 'or', 'unless', 'absent', 'topk', 'bottomk', 'le']);

/** Metric selectors of a PromQL expression with the label names they match on. */
function selectors(expr: string): Array<{ metric: string; labels: string[] }> {
  const out: Array<{ metric: string; labels: string[] }> = [];
  // Label lists of by/ignoring/on (…) are not selectors.
  const stripped = expr.replace(/\b(by|without|ignoring|on|group_left|group_right)\s*\([^)]*\)/g, '$1');
  for (const m of stripped.matchAll(/\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?/g)) {
    const metric = m[1] as string;
    if (PROMQL_WORDS.has(metric) || /^\d/.test(metric)) continue;
    // A word followed by "(" is a function.
    if (stripped.slice((m.index ?? 0) + metric.length).trimStart().startsWith('(') && m[2] === undefined) continue;
    const labels = [...(m[2] ?? '').matchAll(/(\w+)\s*(?:=~|!=|!~|=)/g)].map((x) => x[1] as string);
    out.push({ metric, labels });
  }
  return out;
}

describe('deploy/kubernetes: several replicas (StatefulSet, headless Service, HAProxy, etcd)', () => {
  interface Sts {
    spec: { serviceName: string; replicas: number; selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: IPodSpec }; volumeClaimTemplates: Array<{ metadata: { name: string }; spec: { accessModes: string[] } }> };
  }
  const variant = (): Manifest[] => wiring.manifests.filter((m) => m.file.startsWith(`${VARIANT}/`));
  const gateways = (): Sts => one(variant(), 'StatefulSet', 'codex-app-gateway').doc as unknown as Sts;
  const etcd = (): Sts => one(variant(), 'StatefulSet', 'etcd').doc as unknown as Sts;
  // cluster.secret is the routing's setting (replicas forwarding to each other); until the loader knows it, the variable is left out here.
  const clusterSecretEnv = envName('cluster.secret');
  const knowsClusterSecret = SETTINGS.some((x) => (x.key as string) === 'cluster.secret');
  const podSettings = async (n: number): Promise<{ env: Record<string, string>; settings: Settings }> =>
    await gatewayIn(variant(), gateways().spec.template.spec, wiring.secretExample, wiring.runtime, `pod-${n}`, { 'metadata.name': `codex-app-gateway-${n}`, 'metadata.namespace': 'codex' }, knowsClusterSecret ? [] : [clusterSecretEnv]);

  it('every pod loads the one ConfigMap through the real settings loader, as its own node: node_id its pod name, advertise_url its DNS name through the headless Service', async () => {
    const svc = one(variant(), 'Service', gateways().spec.serviceName).doc as { spec: { clusterIP: string; ports: Array<{ port: number }> } };
    expect(svc.spec.clusterIP).toBe('None');
    const seen = await Promise.all([0, 1, 2].map(podSettings));
    for (const [n, { settings }] of seen.entries()) {
      expect(settings.cluster.nodeId).toBe(`codex-app-gateway-${n}`);
      expect(settings.cluster.advertiseUrl).toBe(`ws://codex-app-gateway-${n}.${gateways().spec.serviceName}.codex.svc:${settings.listen.port}`);
      expect(svc.spec.ports[0]?.port).toBe(settings.listen.port);
      expect(settings.cluster.etcd.endpoints.length).toBeGreaterThan(0);
    }
    // The same homes.root path in every pod, on the pod's own volume.
    const roots = new Set(seen.map((x) => x.settings.homes.root));
    expect(roots.size).toBe(1);
    const mount = gateways().spec.template.spec.containers[0]?.volumeMounts?.find((m) => [...roots][0]?.startsWith(`${m.mountPath}/`));
    expect(gateways().spec.volumeClaimTemplates.map((t) => t.metadata.name)).toContain(mount?.name);
    expect(gateways().spec.volumeClaimTemplates[0]?.spec.accessModes).toEqual(['ReadWriteOnce']);
  });

  it('the cluster secret comes from the Secret, never a literal', () => {
    const e = gateways().spec.template.spec.containers[0]?.env?.find((x) => x.name === clusterSecretEnv);
    expect(e?.valueFrom?.secretKeyRef?.name).toBe(one(wiring.base, 'Secret').doc.metadata?.name);
    expect(Object.keys(wiring.secretExample)).toContain(e?.valueFrom?.secretKeyRef?.key);
    expect(e?.value).toBeUndefined();
  });

  it('the headless Service and the StatefulSet select the gateway pods, and only those', () => {
    const svc = one(variant(), 'Service', gateways().spec.serviceName).doc as { spec: { selector: Record<string, string> } };
    const labels = gateways().spec.template.metadata.labels;
    for (const [k, v] of Object.entries(svc.spec.selector)) expect(labels[k], k).toBe(v);
    for (const [k, v] of Object.entries(gateways().spec.selector.matchLabels)) expect(labels[k], k).toBe(v);
    const haproxy = one(variant(), 'Deployment', 'codex-app-gateway-haproxy').doc as unknown as Sts;
    const theirs = haproxy.spec.template.metadata.labels;
    expect(Object.entries(svc.spec.selector).every(([k, v]) => theirs[k] === v)).toBe(false);
  });

  it('HAProxy runs deploy/haproxy/haproxy.cfg from the ConfigMap the documented command makes, and that file lists every replica by its stable DNS name', async () => {
    const file = await readFile(path.join(DEPLOY, 'haproxy', 'haproxy.cfg'), 'utf8');
    const servers = [...file.matchAll(/^\s*server\s+\S+\s+(\S+):(\d+)/gm)].map((m) => `${m[1]}:${m[2]}`);
    const { spec } = gateways();
    expect(servers).toEqual(Array.from({ length: spec.replicas }, (_, n) => `codex-app-gateway-${n}.${spec.serviceName}:${wiring.settings.listen.port}`));
    // The ConfigMap is made from the file itself (`kubectl create configmap NAME --from-file=deploy/haproxy/haproxy.cfg`), never a copy that could drift.
    const haproxy = one(variant(), 'Deployment', 'codex-app-gateway-haproxy');
    const text = await readFile(path.join(REPO_ROOT, haproxy.file), 'utf8');
    const made = /kubectl create configmap (\S+) --from-file=(\S+)/.exec(text);
    expect(made?.[2]).toBe('deploy/haproxy/haproxy.cfg');
    const pod = (haproxy.doc as unknown as Sts).spec.template.spec;
    const vol = pod.volumes?.find((v) => v.configMap?.name === made?.[1]);
    const c = pod.containers[0];
    const mounted = c?.volumeMounts?.find((m) => m.name === vol?.name)?.mountPath;
    expect(mounted).toBeDefined();
    expect(c?.args).toContain(`${mounted}/haproxy.cfg`);
    // HAProxy listens where the file binds.
    const bind = /^\s*bind\s+:(\d+)/m.exec(file);
    expect(c?.ports?.[0]?.containerPort).toBe(Number(bind?.[1]));
  });

  it('the etcd StatefulSet is an odd number of members, each in the initial cluster, and the gateways list each of them', async () => {
    const { spec } = etcd();
    expect(spec.replicas % 2).toBe(1);
    const env = new Map((spec.template.spec.containers[0]?.env ?? []).map((e) => [e.name, e.value]));
    const members = Array.from({ length: spec.replicas }, (_, n) => `etcd-${n}`);
    expect((env.get('ETCD_INITIAL_CLUSTER') ?? '').split(',').sort()).toEqual(members.map((m) => `${m}=http://${m}.${spec.serviceName}:2380`));
    const { settings } = await podSettings(0);
    expect(settings.cluster.etcd.endpoints).toEqual(members.map((m) => `http://${m}.${spec.serviceName}:2379`));
  });
});

describe('Dockerfile', () => {
  let text: string;
  let stages: Stage[];
  let args: Map<string, string>;

  beforeAll(async () => {
    text = await readFile(path.join(REPO_ROOT, 'Dockerfile'), 'utf8');
    ({ stages, args } = dockerStages(text));
  });

  it('passes dockerfile-utils validation', () => {
    const problems = validateDockerfile(text).map((d) => `line ${d.range.start.line + 1}: ${typeof d.message === 'string' ? d.message : d.message.value}`);
    expect(problems).toEqual([]);
  });

  it('is a multi-stage build on node:20-bookworm-slim that ships only production dependencies', () => {
    expect(args.get('NODE_IMAGE')).toBe('node:20-bookworm-slim');
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const s of stages) expect(s.image).toBe('node:20-bookworm-slim');
    const build = stages[0] as Stage;
    const runtime = stages.at(-1) as Stage;
    const buildRuns = instructions(build, 'RUN').map((i) => i.getArgumentsContent() ?? '').join('\n');
    expect(buildRuns).toMatch(/npm ci\b/);
    expect(buildRuns).toMatch(/npm prune --omit=dev\b/);
    // What leaves the build stage is copied from it by name.
    const copies = instructions(runtime, 'COPY');
    expect(copies.length).toBeGreaterThan(0);
    for (const c of copies) expect(copyFrom(c), c.getArgumentsContent() ?? '').toBe(build.name);
    expect(copies.map((c) => c.getArgumentsContent()).join('\n')).toMatch(/node_modules/);
  });

  it('runs the gateway as a fixed non-root uid under tini as PID 1', () => {
    const runtime = stages.at(-1) as Stage;
    const user = instructions(runtime, 'USER').at(-1)?.getArgumentsContent() ?? '';
    expect(user).toMatch(/^\d+:\d+$/);
    expect(Number(user.split(':')[0])).toBeGreaterThan(0);
    const entrypoint = execForm(instructions(runtime, 'ENTRYPOINT').at(-1) as Instruction);
    expect(entrypoint).toEqual(['/usr/bin/tini', '--']);
    const runs = instructions(runtime, 'RUN').map((i) => i.getArgumentsContent() ?? '').join('\n');
    expect(runs).toMatch(/apt-get install[^\n]*\btini\b/);
    expect(runs).toMatch(/apt-get install[^\n]*\bca-certificates\b/);
    expect(execForm(instructions(runtime, 'CMD').at(-1) as Instruction)).toEqual(['node', 'bin/codex-app-gateway.mjs', 'serve']);
  });

  it('exposes the public port, listens on all interfaces and keeps data.dir on a volume', () => {
    const runtime = stages.at(-1) as Stage;
    const env = stageEnv(runtime);
    expect(env.CXG_LISTEN_HOST).toBe('0.0.0.0');
    expect(env.CXG_DATA_DIR).toBe(IMAGE_DATA_DIR);
    expect(instructions(runtime, 'EXPOSE').map((i) => i.getArgumentsContent())).toEqual(['8080']);
    expect(execForm(instructions(runtime, 'VOLUME').at(-1) as Instruction)).toEqual([IMAGE_DATA_DIR]);
  });

  it('.dockerignore sends exactly what the build stage copies from the context', async () => {
    const rules = (await readFile(path.join(REPO_ROOT, '.dockerignore'), 'utf8'))
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    expect(rules[0]).toBe('*');
    const included = rules.slice(1).map((r) => {
      expect(r.startsWith('!'), r).toBe(true);
      return r.slice(1);
    });
    const fromContext = stages.flatMap((s) =>
      instructions(s, 'COPY')
        .filter((i) => copyFrom(i) === undefined)
        .flatMap((i) => (i.getArgumentsContent() ?? '').split(/\s+/).slice(0, -1)),
    );
    expect(new Set(included)).toEqual(new Set(fromContext));
  });
});
