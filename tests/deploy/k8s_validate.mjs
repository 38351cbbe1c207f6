// Renders every kustomization under deploy/k8s with `kubectl kustomize` and checks each object.
//
//   node tests/deploy/k8s_validate.mjs REPO_ROOT
//
// 1. Schema: each object against its Kubernetes (kubernetes-models) or Prometheus Operator
//    (@kubernetes-models/prometheus-operator) JSON schema, and strictly: a field the API does
//    not define (a typo such as `readinesProbe`) fails too. The models' schemas allow unknown
//    fields, so the field names are read from the models' type declarations (.d.ts).
// 2. The project's rules: probes on grpc.health.v1, drain timing, restricted security context,
//    GPU scheduling, Services and their selectors, ServiceMonitor, PDB, HPA on the queue depth
//    the server exports, prometheus-adapter rule, NetworkPolicy, flags from the ConfigMap, and
//    the image's numeric user.
// Prints one line per check and "N passed, N failed"; exits 1 on any failure, 77 (SKIP) when
// kubectl is not installed.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import YAML from "yaml";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(process.argv[2] ?? path.join(here, "..", ".."));
const k8sDir = path.join(repo, "deploy", "k8s");

let passed = 0;
let failed = 0;
function check(ok, what, detail = "") {
  if (ok) {
    passed++;
    console.log(`ok   ${what}`);
  } else {
    failed++;
    console.log(`FAIL ${what}${detail ? `: ${detail}` : ""}`);
  }
  return ok;
}
const note = (text) => console.log(`note ${text}`);

// --- Rendering ---------------------------------------------------------------------------------
const kubectlVersion = spawnSync("kubectl", ["version", "--client"], { encoding: "utf8" });
if (kubectlVersion.error || kubectlVersion.status !== 0) {
  console.log("SKIP: kubectl not found; it renders the kustomizations (kubectl kustomize)");
  process.exit(77);
}
note(`renderer: kubectl kustomize (${kubectlVersion.stdout.trim().replace(/\n/g, ", ")})`);

// Every folder with a kustomization.yaml but the components (rendered through the overlays).
function kustomizations(dir) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    const sub = path.join(dir, entry.name);
    const file = path.join(sub, "kustomization.yaml");
    if (fs.existsSync(file) && !/^kind:\s*Component\s*$/m.test(fs.readFileSync(file, "utf8"))) {
      out.push(sub);
    }
    out.push(...kustomizations(sub));
  }
  return out.sort();
}
const renders = new Map();
for (const dir of kustomizations(k8sDir)) {
  const name = path.relative(k8sDir, dir);
  const r = spawnSync("kubectl", ["kustomize", dir], { encoding: "utf8" });
  if (!check(r.status === 0, `${name}: renders`, r.stderr.trim())) continue;
  const docs = YAML.parseAllDocuments(r.stdout);
  const errors = docs.flatMap((d) => d.errors.map((e) => e.message));
  if (!check(errors.length === 0, `${name}: rendered YAML parses`, errors.join("; "))) continue;
  renders.set(name, docs.map((d) => d.toJS()).filter(Boolean));
}
for (const want of ["base", "overlays/gpu", "overlays/cpu-dev", "overlays/sessions",
  "prometheus-adapter"]) {
  check(renders.has(want), `kustomization ${want} exists and rendered`);
}

// --- Strict schema validation ------------------------------------------------------------------
// The models' packages export ES modules only ("import" condition), resolved from here.
const resolveModule = (spec) => fileURLToPath(import.meta.resolve(spec));

function modelModule(apiVersion) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "monitoring.coreos.com") {
    return `@kubernetes-models/prometheus-operator/monitoring.coreos.com/${version}`;
  }
  return group ? `kubernetes-models/${group}/${version}` : `kubernetes-models/${version}`;
}

// Reads the declared fields of the TypeScript interfaces the models are generated with.
const dtsCache = new Map();
function parseDts(file) {
  if (dtsCache.has(file)) return dtsCache.get(file);
  const text = fs.readFileSync(file, "utf8").replace(/^[ \t]*\/\*\*[\s\S]*?\*\/[ \t]*\n/gm, "");
  const imports = new Map();
  for (const m of text.matchAll(/^import \{([^}]*)\} from "([^"]+)";/gm)) {
    for (const id of m[1].split(",").map((s) => s.trim()).filter(Boolean)) imports.set(id, m[2]);
  }
  const aliases = new Map();
  for (const m of text.matchAll(/^export type \{([^}]*)\};/gm)) {
    for (const pair of m[1].split(",")) {
      const [orig, alias] = pair.split(" as ").map((s) => s.trim());
      if (alias) aliases.set(alias, orig);
    }
  }
  const interfaces = new Map();
  for (const m of text.matchAll(/^export interface (\w+)(?: extends [^{]+)? \{\n([\s\S]*?)^\}/gm)) {
    const fields = new Map();
    for (const f of m[2].matchAll(/^ {4}"([^"]+)"\??: ([\s\S]*?);\n(?= {4}"|$)/gm)) {
      fields.set(f[1], f[2].replace(/\s+/g, " ").trim());
    }
    interfaces.set(m[1], fields);
  }
  const parsed = { file, imports, aliases, interfaces };
  dtsCache.set(file, parsed);
  return parsed;
}
function resolveSpecifier(fromFile, spec) {
  const js = spec.startsWith(".")
    ? path.resolve(path.dirname(fromFile), spec)
    : resolveModule(spec);
  return js.replace(/\.js$/, ".d.ts");
}
// Fields of the interface `name` as seen from `dts`, or null for a scalar alias (Quantity...).
function lookup(dts, name) {
  const local = dts.aliases.get(name) ?? name;
  if (dts.interfaces.has(local)) return { dts, fields: dts.interfaces.get(local) };
  const spec = dts.imports.get(name);
  if (!spec) return null;
  const target = parseDts(resolveSpecifier(dts.file, spec));
  const found = target.aliases.get(name) ?? name;
  if (target.interfaces.has(found)) return { dts: target, fields: target.interfaces.get(found) };
  const declared = [...target.interfaces.keys()];
  return declared.length === 1 ? { dts: target, fields: target.interfaces.get(declared[0]) } : null;
}
function unknownFields(value, type, dts, where, out) {
  if (value === null || value === undefined) return;
  const t = type.trim();
  let m;
  if ((m = t.match(/^Array<(.+)>$/s))) {
    if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, m[1], dts, `${where}[${i}]`, out));
    return;
  }
  if ((m = t.match(/^\{ \[key: string\]: (.+); \}$/s))) {
    if (typeof value === "object") {
      for (const [k, v] of Object.entries(value)) unknownFields(v, m[1], dts, `${where}.${k}`, out);
    }
    return;
  }
  if (!/^\w+$/.test(t) || typeof value !== "object" || Array.isArray(value)) return;
  const target = lookup(dts, t);
  if (!target) return;
  for (const [k, v] of Object.entries(value)) {
    if (!target.fields.has(k)) out.push(`${where}.${k}`);
    else unknownFields(v, target.fields.get(k), target.dts, `${where}.${k}`, out);
  }
}

const objects = [];
for (const [render, list] of renders) {
  for (const obj of list) {
    const id = `${render}: ${obj.kind}/${obj.metadata?.name}`;
    objects.push({ render, obj, id });
    let mod;
    try {
      mod = await import(modelModule(obj.apiVersion));
    } catch (e) {
      check(false, `${id}: schema for ${obj.apiVersion}`, e.message);
      continue;
    }
    const Model = mod[obj.kind];
    if (!check(Model !== undefined, `${id}: schema for ${obj.apiVersion} ${obj.kind}`)) continue;
    let error = "";
    try {
      new Model(obj).validate();
    } catch (e) {
      error = e.message;
    }
    check(error === "", `${id}: valid against the ${obj.apiVersion} ${obj.kind} schema`, error);
    const dtsFile = resolveModule(`${modelModule(obj.apiVersion)}/${obj.kind}`).replace(/\.js$/, ".d.ts");
    const dts = parseDts(dtsFile);
    const root = [...dts.interfaces.keys()].find((n) => n === `I${obj.kind}`);
    const unknown = [];
    unknownFields(obj, root ?? "", dts, obj.kind, unknown);
    check(root && unknown.length === 0, `${id}: no field the API does not define`, unknown.join(", "));
  }
}

// --- Project rules -----------------------------------------------------------------------------
const matches = (selector, labels) =>
  selector && Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);
const seconds = (s) => Number(s);
// JSON with object keys sorted: kustomize reorders keys, the content is what must match.
const canonical = (v) => JSON.stringify(v, (k, x) => (x && typeof x === "object" && !Array.isArray(x)
  ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : x));
const serverSources = () => {
  const dir = path.join(repo, "server");
  if (!fs.existsSync(dir)) return [];
  const out = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.(cc|h)$/.test(e.name)) out.push(fs.readFileSync(p, "utf8"));
    }
  };
  walk(dir);
  return out;
};
const sources = serverSources();
const haveMain = fs.existsSync(path.join(repo, "server", "main.cc"));

// Flag names: those the server defines (ABSL_FLAG in server/main.cc and, for the sessions'
// flags, server/session_flags.cc), else the team brief's.
const briefFlags = [
  "address", "metrics_address", "backend", "max_message_bytes", "cpu_threads", "max_batch_tokens",
  "max_batch_requests", "max_queue_delay_us", "batching", "max_queue_requests", "max_queue_bytes",
  "max_request_tokens", "device_memory_bytes", "pinned_host_bytes", "drain_timeout_s",
  "log_level", "tls_cert", "tls_key", "tls_client_ca", "auth_token_file",
];
const serverFlags = haveMain
  ? ["main.cc", "session_flags.cc"]
      .map((f) => path.join(repo, "server", f))
      .filter((f) => fs.existsSync(f))
      .flatMap((f) => [...fs.readFileSync(f, "utf8")
        .matchAll(/ABSL_FLAG\(\s*[^,]+,\s*(\w+)\s*,/g)].map((m) => m[1]))
  : briefFlags;
const knownFlags = new Set(serverFlags);
note(haveMain ? `server flags from server/main.cc and session_flags.cc: ${serverFlags.length}`
  : "server/main.cc not present yet: flag names checked against the team brief");

const dockerUser = (() => {
  const df = fs.readFileSync(path.join(repo, "deploy", "docker", "Dockerfile"), "utf8");
  const users = [...df.matchAll(/^USER\s+(\S+)/gm)].map((m) => m[1]);
  return users.at(-1) ?? "";
})();

const adapterRules = (() => {
  const objs = renders.get("prometheus-adapter") ?? [];
  const cm = objs.find((o) => o.kind === "ConfigMap");
  return cm ? YAML.parse(cm.data?.["config.yaml"] ?? "{}")?.rules ?? [] : [];
})();

for (const [render, list] of renders) {
  const of = (kind) => list.filter((o) => o.kind === kind);
  // The server's workload: a Deployment, or a StatefulSet (overlays/sessions: stable replica
  // names for session routing).
  const deployments = [...of("Deployment"), ...of("StatefulSet")];
  if (deployments.length === 0) continue;
  const p = `${render}:`;
  check(deployments.length === 1, `${p} one Deployment or StatefulSet`);
  const dep = deployments[0];
  const pod = dep.spec.template.spec;
  const podLabels = dep.spec.template.metadata?.labels ?? {};
  const c = pod.containers.find((x) => x.name === "server") ?? pod.containers[0];
  check(matches(dep.spec.selector.matchLabels, podLabels), `${p} Deployment selector matches its pods`);

  // Flags: every $(VAR) defined by the flags ConfigMap, every flag a server flag.
  const cmRefs = (c.envFrom ?? []).map((e) => e.configMapRef?.name).filter(Boolean);
  const configMaps = of("ConfigMap").filter((cm) => cmRefs.includes(cm.metadata.name));
  check(configMaps.length === cmRefs.length && cmRefs.length > 0,
    `${p} the flags ConfigMap the container reads is in the render`, cmRefs.join(","));
  const env = Object.assign({}, ...configMaps.map((cm) => cm.data ?? {}));
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef) env[e.name] = `<${e.valueFrom.fieldRef.fieldPath}>`;
  }
  const undefinedVars = (c.args ?? []).flatMap((a) =>
    [...a.matchAll(/\$\((\w+)\)/g)].map((m) => m[1]).filter((v) => !(v in env)));
  check(undefinedVars.length === 0, `${p} every $(VAR) in the args is set by the ConfigMap`,
    undefinedVars.join(", "));
  const args = Object.fromEntries((c.args ?? []).map((a) => {
    const m = a.match(/^--(\w+)=(.*)$/);
    return m ? [m[1], m[2].replace(/\$\((\w+)\)/g, (_, v) => env[v])] : [a, undefined];
  }));
  const notFlags = Object.keys(args).filter((f) => !knownFlags.has(f));
  check(notFlags.length === 0, `${p} every arg is a --flag=value server flag`, notFlags.join(", "));
  const notPassed = serverFlags.filter((f) => !(f in args) && !/^(tls_|auth_)/.test(f));
  if (notPassed.length > 0) note(`${p} server flags left at their defaults: ${notPassed.join(", ")}`);

  // Ports and probes.
  const port = (name) => (c.ports ?? []).find((x) => x.name === name)?.containerPort;
  check(port("grpc") === 50051 && port("metrics") === 9464,
    `${p} container ports grpc=50051 and metrics=9464`);
  check(args.address?.endsWith(`:${port("grpc")}`) && args.metrics_address?.endsWith(`:${port("metrics")}`),
    `${p} --address and --metrics_address listen on the container ports`);
  const probe = (name, service) => {
    const pr = c[name];
    check(pr?.grpc?.port === port("grpc") && (pr?.grpc?.service ?? "") === service,
      `${p} ${name} is a gRPC health probe on the grpc port, service "${service}"`,
      JSON.stringify(pr));
    return pr ?? {};
  };
  const startup = probe("startupProbe", "");
  const liveness = probe("livenessProbe", "");
  const readiness = probe("readinessProbe", "attention.v1.AttentionService");

  // Drain: grace period > preStop sleep + drain timeout; liveness outlasts a drain.
  const drain = seconds(args.drain_timeout_s);
  const preStop = c.lifecycle?.preStop;
  const sleep = preStop?.sleep?.seconds ??
    (preStop?.exec?.command?.[0]?.endsWith("sleep") ? seconds(preStop.exec.command[1]) : NaN);
  check(Number.isFinite(drain) && drain > 0, `${p} --drain_timeout_s is set (${drain} s)`);
  check(Number.isFinite(sleep) && sleep > 0, `${p} preStop sleeps before SIGTERM (${sleep} s)`);
  check(pod.terminationGracePeriodSeconds > drain + sleep,
    `${p} terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} > drain ${drain} + preStop ${sleep}`);
  check((liveness.periodSeconds ?? 10) * (liveness.failureThreshold ?? 3) > drain,
    `${p} liveness failure budget outlasts a drain`);
  check((readiness.periodSeconds ?? 10) * (readiness.failureThreshold ?? 3) < drain,
    `${p} readiness takes a draining pod out before the drain ends`);
  check((startup.periodSeconds ?? 10) * (startup.failureThreshold ?? 3) >= 60,
    `${p} startup probe allows a minute or more for CUDA start-up`);

  // Security: the restricted Pod Security Standard, read-only root, /tmp on an emptyDir.
  const psc = pod.securityContext ?? {};
  const csc = c.securityContext ?? {};
  const uid = csc.runAsUser ?? psc.runAsUser;
  check((csc.runAsNonRoot ?? psc.runAsNonRoot) === true, `${p} runAsNonRoot`);
  check(Number.isInteger(uid) && uid > 0, `${p} runAsUser is a numeric non-root id (${uid})`);
  check(`${uid}` === dockerUser.split(":")[0],
    `${p} runAsUser matches the image's USER (${dockerUser})`);
  check(csc.allowPrivilegeEscalation === false, `${p} allowPrivilegeEscalation: false`);
  check((csc.capabilities?.drop ?? []).includes("ALL") && !(csc.capabilities?.add ?? []).length,
    `${p} capabilities: drop ALL, add none`);
  check((csc.seccompProfile ?? psc.seccompProfile)?.type === "RuntimeDefault",
    `${p} seccompProfile RuntimeDefault`);
  check(csc.readOnlyRootFilesystem === true, `${p} readOnlyRootFilesystem`);
  check(!csc.privileged, `${p} not privileged`);
  const tmp = (c.volumeMounts ?? []).find((m) => m.mountPath === "/tmp");
  check(tmp && pod.volumes?.find((v) => v.name === tmp.name)?.emptyDir !== undefined,
    `${p} /tmp is an emptyDir`);
  check(!pod.hostNetwork && !pod.hostPID && !pod.hostIPC &&
    !(pod.volumes ?? []).some((v) => v.hostPath), `${p} no host namespaces or hostPath volumes`);
  check(pod.automountServiceAccountToken === false, `${p} no service account token mounted`);
  const ns = of("Namespace")[0];
  if (ns) {
    check(ns.metadata.labels?.["pod-security.kubernetes.io/enforce"] === "restricted",
      `${p} namespace enforces the restricted Pod Security Standard`);
    const others = list.filter((o) => o.kind !== "Namespace" && o.metadata.namespace !== ns.metadata.name);
    check(others.length === 0, `${p} every object is in namespace ${ns.metadata.name}`,
      others.map((o) => `${o.kind}/${o.metadata.name}`).join(", "));
  }

  // Resources and GPU scheduling.
  const req = c.resources?.requests ?? {};
  const lim = c.resources?.limits ?? {};
  check(req.cpu && req.memory && lim.memory, `${p} cpu and memory requests, memory limit`);
  const gpus = Number(lim["nvidia.com/gpu"] ?? 0);
  // Host memory the server may hold at once (docs/operations.md, "Sizing").
  const bytes = (q) => {
    const m = String(q).match(/^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/);
    const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
    return m ? Number(m[1]) * (unit[m[2]] ?? 1) : NaN;
  };
  const flagBytes = (f) => Number(args[f] ?? 0);
  // --output_pool_mb defaults to 256 when the Deployment does not pass it.
  const outputPool = Number(args.output_pool_mb ?? 256) * 2 ** 20;
  // The session pool is host memory that a server on the CPU backend fills as sessions grow
  // (--session_pages x --session_page_bytes, 4096 x 64 KiB by default); a CUDA server refuses
  // sessions and leaves it untouched.
  const sessionPool = args.backend === "cuda" ? 0
    : Number(args.session_pages ?? 4096) * Number(args.session_page_bytes ?? 65536);
  const needed = flagBytes("pinned_host_bytes") * Math.max(gpus, 1) + flagBytes("max_queue_bytes") +
    2 * flagBytes("max_message_bytes") + outputPool + 512 * 2 ** 20 + sessionPool;
  check(bytes(lim.memory) >= needed,
    `${p} memory limit ${lim.memory} covers pinned + queue + 2 messages + output pool + 512Mi + session pool (${(needed / 2 ** 30).toFixed(2)} GiB)`);
  if (render.includes("gpu")) {
    check(gpus >= 1, `${p} nvidia.com/gpu limit (${gpus})`);
    check(Object.keys(pod.nodeSelector ?? {}).length > 0, `${p} node selector for GPU nodes`);
    check((pod.tolerations ?? []).some((t) => t.key === "nvidia.com/gpu"),
      `${p} tolerates the nvidia.com/gpu taint`);
    check(args.backend === "cuda", `${p} --backend=cuda`);
  } else {
    check(gpus === 0, `${p} asks for no GPU`);
    check(args.backend === "cpu" || args.backend === "auto", `${p} --backend=${args.backend}`);
  }
  if (args.cpu_threads !== undefined && Number(args.cpu_threads) > 0) {
    check(Number(args.cpu_threads) <= Math.ceil(Number(String(req.cpu).replace(/m$/, "e-3"))),
      `${p} --cpu_threads (${args.cpu_threads}) fits the CPU request (${req.cpu})`);
  }

  // Services.
  const services = of("Service");
  const selecting = services.filter((s) => matches(s.spec.selector, podLabels));
  check(selecting.length === services.length && services.length >= 2,
    `${p} every Service selects the server's pods`);
  const targets = (s, name) => s.spec.ports.find((x) => x.name === name);
  const main = services.find((s) => s.spec.clusterIP !== "None");
  const headless = services.find((s) => s.spec.clusterIP === "None");
  check(main && targets(main, "grpc")?.targetPort === "grpc" && targets(main, "metrics")?.targetPort === "metrics",
    `${p} Service with named grpc and metrics ports`);
  check(headless && targets(headless, "grpc") && !headless.spec.publishNotReadyAddresses,
    `${p} headless Service (grpc, ready pods only) for client-side round robin`);

  // ServiceMonitor: exactly the Service with the metrics port.
  for (const sm of of("ServiceMonitor")) {
    const scraped = services.filter((s) => matches(sm.spec.selector.matchLabels, s.metadata.labels));
    check(scraped.length === 1 && scraped[0] === main,
      `${p} ServiceMonitor selects only the ClusterIP Service (each pod scraped once)`,
      scraped.map((s) => s.metadata.name).join(","));
    check(sm.spec.endpoints.every((e) => scraped.every((s) => targets(s, e.port))),
      `${p} ServiceMonitor endpoints name a port of that Service`);
  }

  // Alerts: the PrometheusRule is the metrics area's rule file, and its job is the Service's.
  const alertsFile = path.join(repo, "deploy", "prometheus", "attention-alerts.yml");
  for (const pr of of("PrometheusRule")) {
    if (fs.existsSync(alertsFile)) {
      const groups = YAML.parse(fs.readFileSync(alertsFile, "utf8")).groups;
      check(canonical(pr.spec.groups) === canonical(groups),
        `${p} PrometheusRule has the rules of deploy/prometheus/attention-alerts.yml`,
        "regenerate it: node tests/deploy/prometheusrule.mjs");
    }
    const jobs = new Set(JSON.stringify(pr.spec.groups).match(/job=\\"[^\\]+\\"/g) ?? []);
    const sm = of("ServiceMonitor")[0];
    const scrapedService = services.find((s) => sm && matches(sm.spec.selector.matchLabels, s.metadata.labels));
    const job = sm?.spec.jobLabel ? scrapedService?.metadata.labels?.[sm.spec.jobLabel] : scrapedService?.metadata.name;
    check(jobs.size > 0 && [...jobs].every((j) => j === `job=\\"${job}\\"`),
      `${p} alerts select the scrape job the ServiceMonitor gives (job="${job}")`, [...jobs].join(" "));
  }

  // StatefulSet: the session replicas. Each pod's name is its replica name (session ids carry
  // it) and its DNS name under the governing headless Service, so a client reaches the replica
  // that holds a session.
  if (dep.kind === "StatefulSet") {
    const governing = services.find((s) => s.metadata.name === dep.spec.serviceName);
    check(governing?.spec.clusterIP === "None" && matches(governing.spec.selector, podLabels),
      `${p} StatefulSet serviceName is a headless Service selecting its pods`, dep.spec.serviceName);
    const replicaVar = String(args.replica_name ?? "");
    const podName = (c.env ?? []).find((e) => e.valueFrom?.fieldRef?.fieldPath === "metadata.name");
    check(podName && (c.args ?? []).includes(`--replica_name=$(${podName.name})`),
      `${p} --replica_name is the pod's name (fieldRef metadata.name)`, replicaVar);
    check(dep.spec.podManagementPolicy === "Parallel",
      `${p} podManagementPolicy Parallel (replicas are independent)`);
    check(of("HorizontalPodAutoscaler").length === 0, `${p} no autoscaling of session replicas (a scale-down ends sessions)`);
    check(args.backend !== "cuda", `${p} sessions run on the CPU backend until the device pool exists`);
  }

  // PodDisruptionBudget.
  const pdbs = of("PodDisruptionBudget");
  check(pdbs.length === 1 && matches(pdbs[0].spec.selector.matchLabels, podLabels) &&
    (pdbs[0].spec.maxUnavailable === 1 || pdbs[0].spec.minAvailable === 1),
    `${p} PodDisruptionBudget (maxUnavailable 1 or minAvailable 1) on the server's pods`);

  // HorizontalPodAutoscaler on the queue depth.
  const hpas = of("HorizontalPodAutoscaler");
  if (render.includes("gpu")) check(hpas.length === 1, `${p} has a HorizontalPodAutoscaler`);
  for (const hpa of hpas) {
    check(hpa.apiVersion === "autoscaling/v2" && hpa.spec.scaleTargetRef.kind === dep.kind &&
      hpa.spec.scaleTargetRef.name === dep.metadata.name, `${p} HPA scales the ${dep.kind}`);
    check(dep.spec.replicas === undefined, `${p} Deployment leaves replicas to the HPA`);
    const metric = hpa.spec.metrics.find((m) => m.type === "Pods")?.pods;
    const name = metric?.metric?.name;
    check(name === "attention_queue_requests" && metric.target.type === "AverageValue",
      `${p} HPA target: average ${name} per pod`);
    check(adapterRules.some((r) => r.name?.as === name && r.seriesQuery?.startsWith(`${name}{`)),
      `${p} the prometheus-adapter rule serves ${name}`);
    if (sources.length > 0 && fs.existsSync(path.join(repo, "server", "metrics", "metrics.cc"))) {
      check(sources.some((s) => s.includes(`"${name}"`)), `${p} the server exports ${name}`);
    } else {
      note(`${p} server/metrics not present: metric name not cross-checked`);
    }
  }

  // NetworkPolicy: grpc from labelled clients, metrics from the monitoring namespace.
  const nps = of("NetworkPolicy");
  check(nps.length === 1 && matches(nps[0].spec.podSelector.matchLabels, podLabels),
    `${p} NetworkPolicy on the server's pods`);
  if (nps.length === 1) {
    const rules = nps[0].spec.ingress ?? [];
    const portRule = (name) => rules.filter((r) => (r.ports ?? []).some((x) => x.port === name));
    check(nps[0].spec.policyTypes.includes("Ingress"), `${p} NetworkPolicy restricts ingress`);
    check(portRule("grpc").length > 0 && portRule("grpc").every((r) => (r.from ?? []).length > 0 &&
      r.from.every((f) => Object.keys(f.podSelector?.matchLabels ?? {}).length > 0)),
      `${p} gRPC only from pods with a client label`);
    check(portRule("metrics").length > 0 && portRule("metrics").every((r) => (r.from ?? []).length > 0 &&
      r.from.every((f) => f.namespaceSelector?.matchLabels?.["kubernetes.io/metadata.name"] === "monitoring")),
      `${p} metrics only from the monitoring namespace`);
    check(rules.every((r) => (r.ports ?? []).length > 0), `${p} no rule opens every port`);
  }
}

// --- prometheus-adapter: the rule, its Helm twin, its PromQL -----------------------------------
check(adapterRules.length > 0, "prometheus-adapter: config.yaml has rules");
const valuesFile = path.join(k8sDir, "prometheus-adapter", "values.yaml");
if (fs.existsSync(valuesFile)) {
  const custom = YAML.parse(fs.readFileSync(valuesFile, "utf8"))?.rules?.custom;
  check(canonical(custom) === canonical(adapterRules),
    "prometheus-adapter: Helm values.yaml has the same rules as rules.yaml");
}
const promtool = spawnSync("promtool", ["--version"]);
if (promtool.error || promtool.status !== 0) {
  note("promtool not found: the adapter's PromQL is not parsed");
} else {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "adapter-rules-"));
  const groups = adapterRules.map((r, i) => ({
    alert: `AdapterRule${i}`,
    expr: r.metricsQuery
      .replaceAll("<<.Series>>", r.seriesQuery.split("{")[0])
      .replaceAll("<<.LabelMatchers>>", 'namespace="attention",pod=~"attention-server-.*"')
      .replaceAll("<<.GroupBy>>", "pod"),
  }));
  const file = path.join(dir, "rules.yaml");
  fs.writeFileSync(file, YAML.stringify({ groups: [{ name: "adapter", rules: groups }] }));
  const r = spawnSync("promtool", ["check", "rules", file], { encoding: "utf8" });
  check(r.status === 0, "prometheus-adapter: metricsQuery is valid PromQL (promtool)",
    `${r.stdout}${r.stderr}`.trim());
  fs.rmSync(dir, { recursive: true, force: true });
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
