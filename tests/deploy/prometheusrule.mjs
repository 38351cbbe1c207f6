// Writes deploy/k8s/components/monitoring/prometheusrule.yaml: the alert rules of
// deploy/prometheus/attention-alerts.yml (the metrics area's file, checked there with promtool)
// as a Prometheus Operator PrometheusRule. The deploy tests fail when the two differ; then run
//   node tests/deploy/prometheusrule.mjs
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import YAML from "yaml";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const source = path.join(repo, "deploy", "prometheus", "attention-alerts.yml");
const target = path.join(repo, "deploy", "k8s", "components", "monitoring", "prometheusrule.yaml");

const { groups } = YAML.parse(fs.readFileSync(source, "utf8"));
const rule = {
  apiVersion: "monitoring.coreos.com/v1",
  kind: "PrometheusRule",
  metadata: { name: "attention-server", labels: { "app.kubernetes.io/name": "attention-service" } },
  spec: { groups },
};
const header = [
  "# Generated from deploy/prometheus/attention-alerts.yml by tests/deploy/prometheusrule.mjs;",
  "# do not edit: change the source and run `node tests/deploy/prometheusrule.mjs`. The alerts",
  "# select job=\"attention-server\", the name of the Service the ServiceMonitor scrapes.",
  "",
].join("\n");
fs.writeFileSync(target, header + YAML.stringify(rule, { lineWidth: 0 }));
console.log(`wrote ${path.relative(repo, target)} (${groups.length} group(s))`);
