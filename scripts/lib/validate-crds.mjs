// Validates the rendered ServiceMonitor and PrometheusRule objects against
// the Prometheus Operator's CRD schemas, as compiled into the npm package
// @kubernetes-models/prometheus-operator (installed by scripts/chart-docs
// into .cache/npm-tools). Reads a JSON array of objects on standard input;
// exits 1 naming every invalid one, 2 when no object of either kind came.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

// By file (the package exports these paths to `import` only, not to a
// resolver rooted elsewhere).
const root = `${process.env.NPM_TOOLS}/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1`;
const models = {
  ServiceMonitor: pathToFileURL(`${root}/ServiceMonitor.js`).href,
  PrometheusRule: pathToFileURL(`${root}/PrometheusRule.js`).href,
};
const docs = JSON.parse(readFileSync(0, "utf8"));
let checked = 0, failed = 0;
for (const doc of docs) {
  const path = models[doc.kind];
  if (!path || doc.apiVersion !== "monitoring.coreos.com/v1") continue;
  const mod = await import(path);
  try {
    new mod[doc.kind](doc).validate();
    checked++;
  } catch (e) {
    failed++;
    console.error(`${doc.kind} ${doc.metadata?.name}: ${e.message}`);
    for (const err of e.errors ?? []) console.error(`  ${JSON.stringify(err)}`);
  }
}
if (failed) process.exit(1);
if (!checked) { console.error("no ServiceMonitor or PrometheusRule to validate"); process.exit(2); }
console.error(`${checked} Prometheus Operator objects valid against their CRD schemas`);
