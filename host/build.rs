//! Builds the bundled plugins in `plugins/` into WebAssembly components, so the router embeds
//! a fresh demo plugin and the tests never run stale WASM (Spin builds its test components the
//! same way).
//!
//! The components land in `$OUT_DIR/plugins/<name>.wasm` (`normalize`, `fanout`, `pii-mask`, `consent`,
//! `fault-loop`, ...). The nested cargo uses its own target directory (`<target>/wasm`) so it
//! never waits on the lock of the build that runs this script.
//!
//! It also provides `libduckdb.so` for the embedded warehouse: the official prebuilt library,
//! taken from the npm package DuckDB publishes it in (building DuckDB's C++ from source takes
//! tens of minutes on two cores; see docs/adr/0004-warehouse.md). It is kept in
//! `<target>/duckdb-<version>/` and the binaries get an rpath to it. `DUCKDB_LIB_DIR` points
//! at another copy instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, component name) of every bundled plugin.
const PLUGINS: &[(&str, &str)] = &[
    ("weir-plugin-normalize", "normalize"),
    ("weir-plugin-fanout", "fanout"),
    ("weir-plugin-pii-mask", "pii-mask"),
    ("weir-plugin-consent", "consent"),
    ("weir-plugin-tracking-plan", "tracking-plan"),
    ("weir-plugin-webhook", "webhook"),
    ("weir-plugin-amplitude", "amplitude"),
    ("weir-plugin-mixpanel", "mixpanel"),
    ("weir-plugin-fault-loop", "fault-loop"),
    ("weir-plugin-fault-oom", "fault-oom"),
    ("weir-plugin-fault-panic", "fault-panic"),
    ("weir-plugin-fault-wrong-count", "fault-wrong-count"),
    ("weir-plugin-fault-bad-json", "fault-bad-json"),
    ("weir-plugin-fault-init-fail", "fault-init-fail"),
    ("weir-plugin-fault-dest-panic", "fault-dest-panic"),
];

const TARGET: &str = "wasm32-wasip2";

/// The npm package holding the prebuilt `libduckdb.so` (C API; the `duckdb` crate's bindings
/// target C API v1, which later libraries keep).
const DUCKDB_NPM: &str = "@duckdb/node-bindings-linux-x64@1.5.6-r.1";
const DUCKDB_DIR: &str = "duckdb-1.5.6";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("host/ is inside the workspace")
        .to_owned();
    for dir in [
        "plugins",
        "sdk/rust/src",
        "sdk/rust/build.rs",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(dir).display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let wasm_target_dir = target_dir(&out_dir).join("wasm");
    link_duckdb(&target_dir(&out_dir));
    build_plugins(&root, &out_dir, &wasm_target_dir);
}

/// Makes `libduckdb.so` available to the linker and, through an rpath, at run time.
fn link_duckdb(target: &Path) {
    println!("cargo::rerun-if-env-changed=DUCKDB_LIB_DIR");
    let dir = match env::var_os("DUCKDB_LIB_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let dir = target.join(DUCKDB_DIR);
            if !dir.join("libduckdb.so").exists() {
                fetch_duckdb(&dir);
            }
            dir
        }
    };
    println!("cargo::rustc-link-search=native={}", dir.display());
    println!("cargo::rustc-link-arg=-Wl,-rpath,{}", dir.display());
}

fn fetch_duckdb(dir: &Path) {
    let staging = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).expect("create the DuckDB download dir");
    let run = |cmd: &mut Command, what: &str| {
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        if !status.success() {
            panic!(
                "{what} failed while fetching the prebuilt libduckdb ({DUCKDB_NPM}). It needs                  npm and the npm registry; or set DUCKDB_LIB_DIR to a directory holding                  libduckdb.so."
            );
        }
    };
    run(
        Command::new("npm")
            .args(["pack", DUCKDB_NPM, "--silent"])
            .current_dir(&staging),
        "npm pack",
    );
    let tarball = std::fs::read_dir(&staging)
        .expect("read the DuckDB download dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .expect("npm pack produced a .tgz");
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("package/libduckdb.so")
            .current_dir(&staging),
        "tar",
    );
    std::fs::create_dir_all(dir).expect("create the DuckDB dir");
    std::fs::rename(
        staging.join("package/libduckdb.so"),
        dir.join("libduckdb.so"),
    )
    .expect("move libduckdb.so into place");
    let _ = std::fs::remove_dir_all(&staging);
}

fn build_plugins(root: &Path, out_dir: &Path, wasm_target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(wasm_target_dir);
    for (package, _) in PLUGINS {
        cmd.args(["-p", package]);
    }
    // Whole-program optimisation makes components measurably faster (benches/plugins.rs);
    // it is set here so the host's own release profile stays quick to build.
    cmd.env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1");
    // The outer build's flags and wrappers (clippy, coverage) are for the host, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run cargo to build the bundled plugins: {e}");
    });
    if !status.success() {
        panic!(
            "building the bundled plugins for {TARGET} failed (see above). If the target is \
             missing, run `rustup target add {TARGET}` (rust-toolchain.toml asks rustup for it)."
        );
    }

    let components = out_dir.join("plugins");
    std::fs::create_dir_all(&components).expect("create $OUT_DIR/plugins");
    for (package, name) in PLUGINS {
        let built = wasm_target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        let dest = components.join(format!("{name}.wasm"));
        std::fs::copy(&built, &dest).unwrap_or_else(|e| {
            panic!("cannot copy {} to {}: {e}", built.display(), dest.display())
        });
    }
}

/// The target directory of the outer build: `$OUT_DIR` is `<target>/[<triple>/]<profile>/build/<pkg>/out`.
fn target_dir(out_dir: &Path) -> PathBuf {
    let mut dir = out_dir;
    while let Some(parent) = dir.parent() {
        if dir.file_name().is_some_and(|n| n == "build") {
            // `<target>/<profile>/build`: the profile dir's parent is the target dir (or
            // `<target>/<triple>`, which is fine as a place to put ours).
            return parent.parent().unwrap_or(parent).to_owned();
        }
        dir = parent;
    }
    out_dir.join("wasm-target")
}
