// Lints deploy/docker/Dockerfile and checks the project's rules for it.
//
//   node tests/deploy/dockerfile_lint.mjs REPO_ROOT
//
// 1. dockerfile-utils: the Dockerfile parses and every instruction is well formed.
// 2. dockerlinter: Dockerfile best practices (rules inspired by hadolint), with ShellCheck on RUN
//    lines when the distribution's shellcheck is installed. Inline `# linter ignore=` comments
//    in the Dockerfile carry the reason for each exception.
// 3. This project's rules: two stages, pinned base tags, the README's packages and CMake
//    configuration in the build stage, only the bundle in the runtime stage, a numeric non-root
//    USER, exec-form ENTRYPOINT, the service's ports, and a build context filter that lets in
//    every source the build needs and nothing else.
// Prints one line per check and "N passed, N failed"; exits 1 on any failure.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { DockerfileParser } from "dockerfile-ast";
import { validate as validateDockerfile } from "dockerfile-utils";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(process.argv[2] ?? path.join(here, "..", ".."));
const dockerfilePath = path.join(repo, "deploy", "docker", "Dockerfile");
const ignorePath = `${dockerfilePath}.dockerignore`;

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
function note(text) {
  console.log(`note ${text}`);
}

const content = fs.readFileSync(dockerfilePath, "utf8");

// --- 1. dockerfile-utils -----------------------------------------------------------------------
const diagnostics = validateDockerfile(content);
check(
  diagnostics.length === 0,
  "dockerfile-utils validate: no diagnostics",
  diagnostics.map((d) => `line ${d.range.start.line + 1}: ${d.message}`).join("; "),
);

// --- 2. dockerlinter ---------------------------------------------------------------------------
const haveShellcheck = spawnSync("shellcheck", ["--version"]).status === 0;
if (!haveShellcheck) {
  note("shellcheck not found: dockerlinter runs without ShellCheck on RUN lines");
}
const linter = spawnSync(
  process.execPath,
  [
    path.join(here, "node_modules", "dockerlinter", "bin", "dockerfilelinter.js"),
    "-f", dockerfilePath, "-s", haveShellcheck ? "bash" : "none", "-e", "info",
  ],
  { encoding: "utf8" },
);
check(
  linter.status === 0 && linter.stdout.trim() === "",
  `dockerlinter (every rule, level info${haveShellcheck ? ", with ShellCheck" : ""})`,
  `${linter.stdout}${linter.stderr}`.trim(),
);

// --- 3. Project rules --------------------------------------------------------------------------
const dockerfile = DockerfileParser.parse(content);
const initialArgs = new Map();
for (const arg of dockerfile.getInitialARGs()) {
  const prop = arg.getProperty();
  if (prop && prop.getValue() !== null) initialArgs.set(prop.getName(), prop.getValue());
}
// An ARG's default may name an earlier ARG (BUILD_IMAGE's names CUDA_VERSION): expand until
// nothing changes (a bounded number of rounds, so that a cycle cannot hang the check).
const expandOnce = (text) =>
  text.replace(/\$\{?(\w+)\}?/g, (m, name) => (initialArgs.has(name) ? initialArgs.get(name) : m));
const expand = (text) => {
  for (let round = 0; round < 8; round++) {
    const next = expandOnce(text);
    if (next === text) break;
    text = next;
  }
  return text;
};

const stages = dockerfile.getFROMs().map((from) => {
  const image = expand(from.getImage() ?? "");
  return { from, image, name: from.getBuildStage() };
});
for (let i = 0; i < stages.length; i++) {
  const start = stages[i].from.getRange().start.line;
  const end = i + 1 < stages.length ? stages[i + 1].from.getRange().start.line : Infinity;
  stages[i].instructions = dockerfile
    .getInstructions()
    .filter((ins) => ins.getRange().start.line > start && ins.getRange().start.line < end);
}
check(stages.length >= 2, "multi-stage build", `${stages.length} stage(s)`);
// The base images are build arguments (defaulting to the CUDA images checked below), so that the
// same file builds a CPU image from a Debian or Ubuntu base (tests/deploy/container_test.sh).
for (const [i, want] of [[0, "BUILD_IMAGE"], [stages.length - 1, "RUNTIME_IMAGE"]]) {
  const raw = stages[i]?.from.getImage() ?? "";
  check(
    new RegExp(`^\\$\\{?${want}\\}?$`).test(raw) && initialArgs.has(want),
    `stage ${stages[i]?.name ?? "?"}: FROM the build argument ${want}, declared with a default`,
    raw,
  );
}

for (const stage of stages) {
  const m = stage.image.match(/^([^:@]+)(?::([^@]+))?(?:@(sha256:[0-9a-f]{64}))?$/);
  const tag = m?.[2];
  check(
    m && ((tag && tag !== "latest" && /\d/.test(tag)) || m[3]),
    `stage ${stage.name ?? "?"}: base image pinned (${stage.image})`,
    "needs an explicit versioned tag or a digest",
  );
}
const build = stages[0];
const runtime = stages[stages.length - 1];
check(/-devel-ubuntu24\.04$/.test(build.image), "build stage: CUDA devel image on Ubuntu 24.04");
check(
  /-(base|runtime)-ubuntu24\.04$/.test(runtime.image),
  "runtime stage: CUDA base or runtime image on Ubuntu 24.04 (same distribution as the build)",
);
const cudaTag = (img) => img.split(":")[1]?.split("-")[0];
check(
  cudaTag(build.image) === cudaTag(runtime.image),
  "build and runtime stages use the same CUDA version",
  `${cudaTag(build.image)} vs ${cudaTag(runtime.image)}`,
);

const keyword = (ins) => ins.getKeyword().toUpperCase();
const argsOf = (ins) => (ins.getArgumentsContent() ?? "").replace(/\\\n/g, " ").replace(/\s+/g, " ");
const buildRuns = build.instructions.filter((i) => keyword(i) === "RUN").map(argsOf).join(" && ");

// The packages: the dev script's list (what the README installs) must all be in the build stage.
const devScript = path.join(repo, "deploy", "scripts", "dev");
const aptInstall = buildRuns.match(/apt-get install ([^&]*)/);
const installed = new Set((aptInstall?.[1] ?? "").split(" ").filter((w) => w && !w.startsWith("-")));
if (fs.existsSync(devScript)) {
  const listed = fs.readFileSync(devScript, "utf8").match(/^packages=\(([\s\S]*?)\)/m);
  const wanted = (listed?.[1] ?? "").split(/\s+/).filter(Boolean);
  const missing = wanted.filter((p) => !installed.has(p));
  check(
    wanted.length > 0 && missing.length === 0,
    `build stage installs the dev script's ${wanted.length} packages`,
    `missing: ${missing.join(" ")}`,
  );
} else {
  note("deploy/scripts/dev not found: package list not cross-checked");
}
check(installed.has("patchelf"), "build stage installs patchelf (for the bundle)");
check(/rm -rf \/var\/lib\/apt\/lists/.test(buildRuns), "build stage removes the apt lists");

// ATTN_CUDA is the build stage's argument, ON unless the builder turns it off.
const cudaArg = build.instructions
  .filter((i) => keyword(i) === "ARG")
  .map((i) => i.getProperty())
  .find((prop) => prop?.getName() === "ATTN_CUDA");
check(
  cudaArg?.getValue() === "ON",
  "build stage: ARG ATTN_CUDA defaults to ON",
  cudaArg?.getValue(),
);
const configure = [
  "cmake -S . -B build -G Ninja",
  "-DCMAKE_BUILD_TYPE=Release",
  '-DATTN_CUDA="${ATTN_CUDA}"',
  '-DCMAKE_CUDA_ARCHITECTURES="80;90a"',
  "-DATTN_BUILD_TESTS=OFF",
  "-DATTN_BUILD_BENCH=OFF",
];
check(
  configure.every((part) => buildRuns.includes(part)),
  "build stage configures as the README does",
  `expected ${configure.join(" ")}`,
);
check(
  /cmake --build build --target attention_server attention_cli/.test(buildRuns),
  "build stage builds attention_server and attention_cli",
);
check(
  /deploy\/bundle\/make-bundle\.sh build /.test(buildRuns),
  "build stage packs them with deploy/bundle/make-bundle.sh",
);

// Every directory the top-level CMakeLists adds (but tests and bench, which are off) is copied.
const rootCmake = fs.readFileSync(path.join(repo, "CMakeLists.txt"), "utf8");
const subdirs = [...rootCmake.matchAll(/add_subdirectory\((\w+)\)/g)]
  .map((m) => m[1])
  .filter((d) => d !== "tests" && d !== "bench");
const copies = build.instructions.filter((i) => keyword(i) === "COPY").map((i) => argsOf(i).split(" "));
const copiedSources = copies.flatMap((parts) => parts.slice(0, -1).filter((p) => !p.startsWith("--")));
const copied = (p) => copiedSources.some((src) => src.replace(/\/$/, "") === p);
for (const dir of subdirs) {
  const ok =
    copied(dir) || (dir === "deploy" && copied("deploy/CMakeLists.txt") && copied("deploy/bundle"));
  check(ok, `build stage copies ${dir}/ (added by the top-level CMakeLists.txt)`);
}
check(copied("CMakeLists.txt") && copied("cmake"), "build stage copies CMakeLists.txt and cmake/");
const deployCmake = fs.readFileSync(path.join(repo, "deploy", "CMakeLists.txt"), "utf8");
check(
  !/add_subdirectory/.test(deployCmake),
  "deploy/CMakeLists.txt adds no subdirectory the image would miss",
);

// The runtime stage: the bundle from the build stage, no build tools, no shell steps.
const rk = runtime.instructions.map(keyword);
check(!rk.includes("RUN") && !rk.includes("ADD"), "runtime stage has no RUN or ADD");
const runtimeCopies = runtime.instructions.filter((i) => keyword(i) === "COPY");
check(
  runtimeCopies.length > 0 &&
    runtimeCopies.every((i) => (i.getFromFlag()?.getValue() ?? "") === build.name),
  `runtime stage copies only from the build stage (${build.name})`,
);
const users = runtime.instructions.filter((i) => keyword(i) === "USER").map(argsOf);
const user = users.at(-1) ?? "";
check(
  /^[1-9]\d*(:[1-9]\d*)?$/.test(user),
  `runtime stage USER is numeric and not root (${user})`,
);
const entrypoints = runtime.instructions.filter((i) => keyword(i) === "ENTRYPOINT");
const entry = entrypoints.at(-1);
const entryJson = entry?.getJSONStrings?.().map((s) => s.getJSONValue()) ?? [];
check(
  entrypoints.length === 1 && entryJson.length > 0,
  "runtime stage has one exec-form (JSON) ENTRYPOINT",
);
const installDir = runtimeCopies.map((i) => argsOf(i).split(" ").at(-1)).find(Boolean) ?? "";
check(
  entryJson[0] === `${installDir.replace(/\/$/, "")}/bin/attention_server`,
  `ENTRYPOINT runs the bundled server (${entryJson[0]})`,
);
const cmds = runtime.instructions.filter((i) => keyword(i) === "CMD");
check(
  cmds.every((c) => (c.getJSONStrings?.() ?? []).length > 0),
  "CMD (default flags) is in exec form",
);
const exposed = runtime.instructions
  .filter((i) => keyword(i) === "EXPOSE")
  .flatMap((i) => argsOf(i).split(" "));
check(
  exposed.includes("50051") && exposed.includes("9464"),
  "runtime stage exposes 50051 (gRPC) and 9464 (metrics)",
);
check(!rk.includes("HEALTHCHECK"), "no HEALTHCHECK (Kubernetes probes gRPC health natively)");

// --- Build context filter ----------------------------------------------------------------------
// Docker's .dockerignore semantics: patterns relative to the context root, `*` within one path
// element, `**` across elements, a match on a directory covers what it holds, the last matching
// pattern decides, `!` re-includes.
function compile(pattern) {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*" && pattern[i + 1] === "*") {
      i++;
      if (pattern[i + 1] === "/") {
        re += "(?:.*/)?";
        i++;
      } else {
        re += ".*";
      }
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}
const rules = fs
  .readFileSync(ignorePath, "utf8")
  .split("\n")
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith("#"))
  .map((l) => {
    const negate = l.startsWith("!");
    const p = path.posix.normalize((negate ? l.slice(1) : l).replace(/^\/+/, "")).replace(/\/$/, "");
    return { negate, re: compile(p) };
  });
function excluded(file) {
  const parts = file.split("/");
  let out = false;
  for (const { negate, re } of rules) {
    for (let n = 1; n <= parts.length; n++) {
      if (re.test(parts.slice(0, n).join("/"))) {
        out = !negate;
        break;
      }
    }
  }
  return out;
}
const tracked = spawnSync("git", ["-C", repo, "ls-files"], { encoding: "utf8" });
if (tracked.status === 0) {
  const files = tracked.stdout.split("\n").filter(Boolean);
  const needed = files.filter((f) =>
    copiedSources.some((src) => {
      const s = src.replace(/\/$/, "");
      return f === s || f.startsWith(`${s}/`);
    }),
  );
  const dropped = needed.filter(excluded);
  check(
    needed.length > 0 && dropped.length === 0,
    `Dockerfile.dockerignore lets in the ${needed.length} tracked files the build copies`,
    `filtered out: ${dropped.slice(0, 10).join(" ")}`,
  );
  const extra = files.filter((f) => !excluded(f) && !needed.includes(f));
  check(extra.length === 0, "Dockerfile.dockerignore lets in nothing the build does not copy",
    extra.slice(0, 10).join(" "));
} else {
  note("not a git checkout: the context filter is checked on sample paths only");
}
for (const junk of ["build/CMakeCache.txt", "build-x/a.o", ".git/HEAD", ".gpu-h100/out.json",
  "tests/deploy/node_modules/yaml/package.json", "server/node_modules/x", "proto/__pycache__/x"]) {
  check(excluded(junk), `Dockerfile.dockerignore keeps out ${junk}`);
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
