// Runs a Python script under a 32-bit MicroPython: the npm package
// @micropython/micropython-webassembly-pyscript (wasm32: 4-byte pointers, 31-bit small ints, as on
// the ESP32), installed by `make deps` (package.json). Its heap grows on demand, so it answers "how
// many bytes", not "does it fit": gc.mem_alloc() deltas, import footprints.
//
//   node bench/mp32.mjs [--lib PATH]... [--file PATH]... (SCRIPT | -c CODE) [ARG]...
//
// --lib DIR puts the files under DIR into the interpreter's /lib (on sys.path), keeping subfolders
// (e.g. the .mpy files from sim_env.compile_firmware); --lib FILE puts one file there. --file PATH
// copies a host file to the same path inside (for scripts that open their arguments).
// bench/mp32_shims (socket, termios: modules this port lacks) always go in /lib, last.
// Exit status: 0, the SystemExit code, or 1 with the Python traceback on stderr.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const HERE = path.dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  process.stderr.write(`mp32: ${msg}\nusage: node bench/mp32.mjs [--lib PATH]... [--file PATH]... (SCRIPT | -c CODE) [ARG]...\n`);
  process.exit(2);
}

function mkdirs(FS, dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    try {
      FS.mkdir(cur);
    } catch (e) {
      // exists already
    }
  }
}

function putTree(FS, src, dst) {
  if (fs.statSync(src).isDirectory()) {
    for (const name of fs.readdirSync(src)) {
      if (name !== "__pycache__") putTree(FS, path.join(src, name), dst + "/" + name);
    }
  } else if (/\.(mpy|py)$/.test(src)) {
    mkdirs(FS, path.posix.dirname(dst));
    if (!existing.has(dst)) FS.writeFile(dst, fs.readFileSync(src));
    existing.add(dst);
  }
}

const existing = new Set(); // the first --lib that provides a module wins, as on sys.path
const libs = [];
const files = [];
let script = null;
let code = null;
const argv = process.argv.slice(2);
while (argv.length) {
  const a = argv.shift();
  if (a === "--lib" || a === "--file") {
    if (!argv.length) usage(`${a} needs a path`);
    (a === "--lib" ? libs : files).push(path.resolve(argv.shift()));
  } else if (a === "-c") {
    if (!argv.length) usage("-c needs code");
    code = argv.shift();
    script = "-c";
    break;
  } else {
    script = a;
    break;
  }
}
if (script === null) usage("no script");
if (code === null) {
  try {
    code = fs.readFileSync(script, "utf8");
  } catch (e) {
    usage(`cannot read ${script}: ${e.message}`);
  }
}

const mp = await loadMicroPython({
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  linebuffer: false,
});
for (const lib of libs) {
  if (!fs.existsSync(lib)) usage(`no such file or folder: ${lib}`);
  putTree(mp.FS, lib, fs.statSync(lib).isDirectory() ? "/lib" : "/lib/" + path.basename(lib));
}
putTree(mp.FS, path.join(HERE, "mp32_shims"), "/lib");
for (const f of files) {
  mkdirs(mp.FS, path.posix.dirname(f));
  mp.FS.writeFile(f, fs.readFileSync(f));
}
mp.globals.set("_mp32_argv", [script, ...argv]);
try {
  // A JS array arrives as a proxy: copy it into a real list, then drop the name.
  mp.runPython("import sys\nsys.argv[:] = [str(a) for a in _mp32_argv]\ndel _mp32_argv");
  await mp.runPythonAsync(code); // async: a script may await (the port collects garbage then)
} catch (e) {
  if (e.type === "SystemExit") {
    // As CPython: sys.exit() -> 0, sys.exit(n) -> n, sys.exit("why") -> prints why, 1.
    const arg = /SystemExit(?:: (.*))?\s*$/.exec(e.message || "");
    const v = arg && arg[1] !== undefined ? arg[1].trim() : "";
    if (v === "" || v === "None") process.exit(0);
    if (/^-?\d+$/.test(v)) process.exit(Number(v));
    process.stderr.write(v + "\n");
    process.exit(1);
  }
  process.stderr.write((e.message || String(e)) + "\n");
  process.exit(1);
}
process.exit(0);
