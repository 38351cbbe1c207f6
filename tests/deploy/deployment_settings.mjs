// Prints the settings of the kustomize base's Deployment that can be checked against the image
// without a cluster, one per line, for tests/deploy/container_test.sh:
//
//   node tests/deploy/deployment_settings.mjs REPO_ROOT
//
//   user UID                      securityContext runAsUser (the container's, else the pod's)
//   group GID                     securityContext runAsGroup (likewise)
//   read_only true|false          readOnlyRootFilesystem
//   tmpfs PATH SIZE               an emptyDir mount (SIZE: its sizeLimit, or "-")
//   port NAME NUMBER              a containerPort
//   probe KIND grpc PORT SERVICE  a startup / liveness / readiness probe ("-" for service "")
//   probe KIND http PORT PATH
//   probe KIND tcp PORT
//   scrape PORT PATH              the ServiceMonitor's endpoint, resolved through the Service to
//                                 the container port
//   exec KIND WORD...             a lifecycle hook's command (preStop, postStart)
//   env NAME=VALUE                a variable of the flags ConfigMap (configMapGenerator envs)
//   env_unused NAME               a variable of the ConfigMap that no command word or arg names
//   command WORD                  a word of the container's command (none: the image's
//                                 ENTRYPOINT runs), with $(VAR) expanded as in args
//   arg ARG                       an argument, with $(VAR) expanded from the ConfigMap as the
//                                 kubelet expands it
//
// Ports are numbers (named ports resolved). Exits 1 with a message on stderr when a setting
// cannot be read or an argument names a variable the ConfigMap does not define.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import YAML from "yaml";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(process.argv[2] ?? path.join(here, "..", ".."));
const base = path.join(repo, "deploy", "k8s", "base");
const monitoring = path.join(repo, "deploy", "k8s", "components", "monitoring");

function die(message) {
  process.stderr.write(`deployment_settings: ${message}\n`);
  process.exit(1);
}
function readYaml(file) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, "utf8")).map((d) => d.toJS());
  return docs.filter(Boolean);
}
function findKind(dir, kind) {
  const kustomization = readYaml(path.join(dir, "kustomization.yaml"))[0] ?? {};
  for (const file of kustomization.resources ?? []) {
    const doc = readYaml(path.join(dir, file)).find((d) => d.kind === kind);
    if (doc) return { doc, kustomization };
  }
  die(`no ${kind} among the resources of ${path.relative(repo, dir)}/kustomization.yaml`);
}

const { doc: deployment, kustomization } = findKind(base, "Deployment");
const { doc: service } = findKind(base, "Service");
const { doc: serviceMonitor } = findKind(monitoring, "ServiceMonitor");
const pod = deployment.spec?.template?.spec ?? die("Deployment has no pod template");
const container = pod.containers?.[0] ?? die("Deployment has no container");
const out = [];

// securityContext: the container's fields override the pod's.
const security = { ...(pod.securityContext ?? {}), ...(container.securityContext ?? {}) };
if (security.runAsUser === undefined) die("no runAsUser in the securityContext");
out.push(`user ${security.runAsUser}`);
out.push(`group ${security.runAsGroup ?? security.runAsUser}`);
out.push(`read_only ${security.readOnlyRootFilesystem === true}`);
for (const mount of container.volumeMounts ?? []) {
  const volume = (pod.volumes ?? []).find((v) => v.name === mount.name);
  if (volume?.emptyDir) out.push(`tmpfs ${mount.mountPath} ${volume.emptyDir.sizeLimit ?? "-"}`);
}

const containerPorts = new Map((container.ports ?? []).map((p) => [p.name, p.containerPort]));
for (const [name, number] of containerPorts) out.push(`port ${name} ${number}`);
const portNumber = (port, where) => {
  if (typeof port === "number") return port;
  if (containerPorts.has(port)) return containerPorts.get(port);
  die(`${where}: port ${port} is not a named containerPort`);
};

for (const kind of ["startupProbe", "livenessProbe", "readinessProbe"]) {
  const probe = container[kind];
  if (!probe) continue;
  const name = kind.replace(/Probe$/, "");
  if (probe.grpc) {
    const port = portNumber(probe.grpc.port, kind);
    out.push(`probe ${name} grpc ${port} ${probe.grpc.service || "-"}`);
  } else if (probe.httpGet) {
    const port = portNumber(probe.httpGet.port, kind);
    out.push(`probe ${name} http ${port} ${probe.httpGet.path ?? "/"}`);
  } else if (probe.tcpSocket) {
    out.push(`probe ${name} tcp ${portNumber(probe.tcpSocket.port, kind)}`);
  } else if (probe.exec) {
    out.push(`exec ${name}Probe ${probe.exec.command.join(" ")}`);
  }
}

// ServiceMonitor endpoint -> Service port of that name -> its targetPort -> containerPort.
for (const endpoint of serviceMonitor.spec?.endpoints ?? []) {
  const servicePort = (service.spec?.ports ?? []).find((p) => p.name === endpoint.port);
  if (!servicePort) die(`ServiceMonitor port ${endpoint.port} is not a port of the Service`);
  const target = servicePort.targetPort ?? servicePort.port;
  const port = portNumber(target, `Service port ${endpoint.port}`);
  out.push(`scrape ${port} ${endpoint.path ?? "/metrics"}`);
}

for (const [hook, handler] of Object.entries(container.lifecycle ?? {})) {
  if (handler.exec) out.push(`exec ${hook} ${handler.exec.command.join(" ")}`);
}

// The flags ConfigMap: kustomize's env file format (KEY=VALUE, # comments, blank lines).
const env = new Map();
const generator = (kustomization.configMapGenerator ?? []).find((g) =>
  (container.envFrom ?? []).some((e) => e.configMapRef?.name === g.name),
);
if (!generator) die("the container's envFrom names no configMapGenerator of the base");
for (const file of generator.envs ?? []) {
  for (const line of fs.readFileSync(path.join(base, file), "utf8").split("\n")) {
    const text = line.trim();
    if (!text || text.startsWith("#")) continue;
    const eq = text.indexOf("=");
    if (eq <= 0) die(`${file}: not KEY=VALUE: ${text}`);
    env.set(text.slice(0, eq), text.slice(eq + 1));
  }
}
for (const [name, value] of env) out.push(`env ${name}=${value}`);
const configMapVars = [...env.keys()];
for (const variable of container.env ?? []) {
  if (variable.value !== undefined) env.set(variable.name, variable.value);
}

// The kubelet's expansion: $(VAR) becomes VAR's value, $$ a literal $; an undefined variable
// would stay as written, which here is a mistake in the manifest.
const used = new Set();
const expand = (word) =>
  String(word).replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name) => {
    if (m === "$$") return "$";
    if (!env.has(name)) die(`${word}: $(${name}) is not defined by the ConfigMap`);
    used.add(name);
    return env.get(name);
  });
for (const word of container.command ?? []) out.push(`command ${expand(word)}`);
for (const arg of container.args ?? []) out.push(`arg ${expand(arg)}`);
for (const name of configMapVars) if (!used.has(name)) out.push(`env_unused ${name}`);

process.stdout.write(`${out.join("\n")}\n`);
