// Type-checks Grafana dashboard files against @grafana/schema with `tsc --strict`.
//
//   node monitoring/schema-check/check.mjs [--out DIR] [dashboard.json ...]
//
// Without files it checks every dashboard in monitoring/grafana/dashboards. Each file becomes a TypeScript
// module: one constant per panel, typed by the panel's `type` (its options and custom field config against
// that panel type's own types), then the whole dashboard typed as Grafana's `Dashboard` with those panels in
// it. tsc's errors are printed with the panel they are in. The modules go to a temporary directory that is
// removed afterwards, or to DIR (kept) with --out. Exits 0 when every file passes, 1 otherwise.

import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const tsc = join(here, "node_modules", "typescript", "bin", "tsc");
const types = join(here, "dashboard-types");

function usage(message) {
  console.error(`${message}\nusage: node check.mjs [--out DIR] [dashboard.json ...]`);
  process.exit(2);
}

function parseArgs(argv) {
  const files = [];
  let out = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out") {
      out = argv[++i] ?? usage("--out needs a directory");
    } else if (argv[i].startsWith("-")) {
      usage(`unknown option ${argv[i]}`);
    } else {
      files.push(resolve(argv[i]));
    }
  }
  if (files.length === 0) {
    const folder = join(here, "..", "grafana", "dashboards");
    for (const name of readdirSync(folder).sort()) {
      if (name.endsWith(".json")) files.push(join(folder, name));
    }
  }
  return { files, out };
}

/**
 * The TypeScript module for one dashboard, and which of its lines belong to which panel. Panels are emitted
 * as separate constants before the dashboard so that each is checked against its own panel type; the
 * dashboard then refers to them by name in place of the panel objects.
 */
function emit(dashboard) {
  const lines = [`import type { DashboardFile, TypedPanel, TypedRow } from ${JSON.stringify(types)};`, ""];
  const regions = []; // { from, to, label }: 1-based line ranges of panel constants
  // A placeholder no dashboard contains by chance, replaced by a constant's name after stringifying.
  const marker = `@panel-${randomBytes(8).toString("hex")}:`;
  let count = 0;

  const constant = (panel, label) => {
    const name = `panel_${count++}`;
    const isRow = panel.type === "row";
    const body = { ...panel };
    if (isRow) {
      body.panels = (panel.panels ?? []).map(
        (inner, i) => marker + constant(inner, `${label}.panels[${i}]`),
      );
    }
    const type = isRow ? "TypedRow" : `TypedPanel<${JSON.stringify(panel.type ?? null)}>`;
    const title = JSON.stringify(panel.title ?? "");
    const text = `const ${name}: ${type} = ${stringify(body, marker)};`.split("\n");
    const from = lines.length + 1;
    lines.push(`// ${label}: id ${panel.id}, ${title} (${panel.type})`, ...text, "");
    regions.push({ from, to: lines.length, label: `${label} id ${panel.id} ${title} (${panel.type})` });
    return name;
  };

  const body = { ...dashboard };
  if (Array.isArray(dashboard.panels)) {
    body.panels = dashboard.panels.map((panel, i) => marker + constant(panel, `panels[${i}]`));
  }
  lines.push(`export const dashboard: DashboardFile = ${stringify(body, marker)};`, "");
  return { source: lines.join("\n"), regions };
}

/** JSON text in which each `marker + name` string becomes the bare identifier `name`. */
function stringify(value, marker) {
  const quoted = JSON.stringify(marker).slice(1, -1);
  const pattern = new RegExp(`"${quoted.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(panel_\\d+)"`, "g");
  return JSON.stringify(value, null, 2).replace(pattern, "$1");
}

function check(files, out) {
  if (!existsSync(tsc)) {
    console.error(`${tsc} not found: run npm ci in ${here}`);
    return 1;
  }
  const directory = out === null ? mkdtempSync(join(tmpdir(), "dashboard-schema-")) : resolve(out);
  mkdirSync(directory, { recursive: true });
  try {
    const modules = new Map(); // module path -> { file, regions }
    for (const [i, file] of files.entries()) {
      let dashboard;
      try {
        dashboard = JSON.parse(readFileSync(file, "utf8"));
      } catch (error) {
        console.error(`${file}: ${error.message}`);
        return 1;
      }
      const { source, regions } = emit(dashboard);
      const module = join(directory, `${i}-${basename(file, ".json").replace(/[^\w-]/g, "_")}.ts`);
      writeFileSync(module, source);
      modules.set(module, { file, regions });
    }
    writeFileSync(
      join(directory, "tsconfig.json"),
      JSON.stringify({ extends: join(here, "tsconfig.json"), files: [...modules.keys()] }, null, 2),
    );
    const done = spawnSync(
      process.execPath,
      [tsc, "-p", join(directory, "tsconfig.json"), "--noEmit", "--strict", "--pretty", "false"],
      { cwd: directory, encoding: "utf8" },
    );
    if (done.error) {
      console.error(`cannot run ${tsc}: ${done.error.message}`);
      return 1;
    }
    process.stdout.write(explain(done.stdout + done.stderr, directory, modules));
    if (done.status === 0) {
      for (const file of files) console.log(`${file}: matches @grafana/schema`);
    }
    return done.status === 0 ? 0 : 1;
  } finally {
    if (out === null) rmSync(directory, { recursive: true, force: true });
  }
}

/** tsc's output with the dashboard file and panel named on each error that points into a module. */
function explain(output, directory, modules) {
  return output.replace(/^(.+?)\((\d+),(\d+)\): /gm, (whole, path, line) => {
    const module = modules.get(resolve(directory, path));
    if (!module) return whole;
    const region = module.regions.find((r) => r.from <= Number(line) && Number(line) < r.to);
    return `${module.file}: ${region ? region.label : "dashboard"}: ${whole}`;
  });
}

const { files, out } = parseArgs(process.argv.slice(2));
process.exit(check(files, out));
