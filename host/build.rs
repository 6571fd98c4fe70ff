//! Builds the bundled plugins in `plugins/` into WebAssembly components, so the router embeds
//! a fresh demo plugin and the tests never run stale WASM (Spin builds its test components the
//! same way).
//!
//! The components land in `$OUT_DIR/plugins/<name>.wasm` (`normalize`, `fanout`, `pii-mask`,
//! `fault-loop`, ...). The nested cargo uses its own target directory (`<target>/wasm`) so it
//! never waits on the lock of the build that runs this script.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, component name) of every bundled plugin.
const PLUGINS: &[(&str, &str)] = &[
    ("weir-plugin-normalize", "normalize"),
    ("weir-plugin-fanout", "fanout"),
    ("weir-plugin-pii-mask", "pii-mask"),
    ("weir-plugin-fault-loop", "fault-loop"),
    ("weir-plugin-fault-oom", "fault-oom"),
    ("weir-plugin-fault-panic", "fault-panic"),
    ("weir-plugin-fault-wrong-count", "fault-wrong-count"),
    ("weir-plugin-fault-bad-json", "fault-bad-json"),
    ("weir-plugin-fault-init-fail", "fault-init-fail"),
];

const TARGET: &str = "wasm32-wasip2";

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

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(&wasm_target_dir);
    for (package, _) in PLUGINS {
        cmd.args(["-p", package]);
    }
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
