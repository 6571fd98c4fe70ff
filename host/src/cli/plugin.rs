//! `weir plugin new|build|test|deploy`: the local plugin workflow.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::admin_client::{self, AdminArgs};
use crate::plugin::{PluginEngine, PluginLimits, config_file, fixtures};
use crate::telemetry::Metrics;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate that builds and passes its own fixtures.
    New {
        /// Plugin (and crate) name: letters, digits, `-` and `_`.
        name: String,
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        #[arg(long, value_enum, default_value_t = Kind::Transformer)]
        kind: Kind,
        /// Directory to create the crate in (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path of the weir-plugin SDK crate (default: the one this weir was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate into a WebAssembly component; prints the component's path.
    Build {
        /// The plugin crate (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run fixtures (input events and expected outcomes) against a component, with the same
    /// runtime and limits as the router. PLUGIN is a .wasm file, or a plugin crate (built first,
    /// fixtures from its fixtures/ directory).
    Test {
        plugin: PathBuf,
        /// Directory of fixture files (*.json).
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// Config (JSON, or YAML for .yaml / .yml) for fixtures that have no `config` of their own.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Deploy a new version to a running router: new component, new config, or both. It goes
    /// live once it passed init and the plugin's fixtures; otherwise the live version stays.
    Deploy {
        /// The plugin's name in weir.toml.
        name: String,
        /// The component (.wasm).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// The config, a JSON file (or YAML for .yaml / .yml).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Lang {
    Rust,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Transformer,
    Filter,
}

pub fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::New {
            name,
            lang: Lang::Rust,
            kind,
            dir,
            sdk,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = match sdk {
                Some(s) => s,
                None => default_sdk()?,
            };
            scaffold(&name, kind, &dir, &sdk)?;
            println!("created {} ({})", dir.display(), kind_name(kind));
            println!("  build:  weir plugin build {}", dir.display());
            println!("  test:   weir plugin test {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Build { dir } => {
            let wasm = build(&dir)?;
            println!("{}", wasm.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Test {
            plugin,
            fixtures,
            config,
        } => test(&plugin, fixtures, config),
        PluginCommand::Deploy {
            name,
            wasm,
            config,
            admin,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(w) = wasm {
                let bytes =
                    std::fs::read(&w).with_context(|| format!("cannot read {}", w.display()))?;
                body.insert(
                    "component_base64".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                );
            }
            if let Some(c) = config {
                body.insert("config".into(), read_config(&c)?);
            }
            if body.is_empty() {
                bail!("nothing to deploy: give --wasm, --config or both");
            }
            let answer = admin_client::call(
                &admin,
                http::Method::POST,
                &format!("/admin/plugins/{name}/deploy"),
                Some(Value::Object(body)),
            )?;
            println!(
                "{name}: version {} is live",
                answer["active"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Transformer => "transformer",
        Kind::Filter => "filter",
    }
}

/// A plugin config file, JSON or YAML (see [`config_file`]).
fn read_config(path: &Path) -> anyhow::Result<Value> {
    Ok(config_file::read(path)?)
}

/// The SDK this binary was built from.
fn default_sdk() -> anyhow::Result<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/rust");
    sdk.canonicalize().with_context(|| {
        format!(
            "the weir-plugin SDK is not at {} (weir was built elsewhere); pass --sdk PATH",
            sdk.display()
        )
    })
}

fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        bail!(
            "{} has no Cargo.toml: give the plugin crate's directory",
            dir.display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!(
            "the build failed (see above); if wasm32-wasip2 is missing: rustup target add wasm32-wasip2"
        );
    }
    // The component is the artifact of the package's cdylib.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut wasm = None;
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["manifest_path"].as_str().map(Path::new)
                == manifest.canonicalize().ok().as_deref()
        {
            for f in msg["filenames"].as_array().into_iter().flatten() {
                if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                    wasm = Some(PathBuf::from(f));
                }
            }
        }
    }
    wasm.with_context(|| {
        format!(
            "the build of {} produced no .wasm: is its crate-type cdylib?",
            dir.display()
        )
    })
}

fn test(
    plugin: &Path,
    fixtures: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (wasm, fixtures) = if plugin.is_dir() {
        (
            build(plugin)?,
            fixtures.unwrap_or_else(|| plugin.join("fixtures")),
        )
    } else {
        let f = fixtures.context("give --fixtures DIR with the component")?;
        (plugin.to_owned(), f)
    };
    let config = match config {
        Some(c) => read_config(&c)?.to_string(),
        None => "{}".to_owned(),
    };
    let bytes: Arc<[u8]> = std::fs::read(&wasm)
        .with_context(|| format!("cannot read {}", wasm.display()))?
        .into();
    let engine = local_engine()?;
    let name = wasm
        .file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
    let results = fixtures::run_dir(
        &engine,
        &name,
        None,
        &bytes,
        &config,
        PluginLimits::default(),
        &fixtures,
        &Metrics::new().plugins,
    )?;
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    for r in &results {
        match &r.result {
            Ok(()) => println!("ok    {} ({:.1} ms)", r.name, r.elapsed.as_secs_f64() * 1e3),
            Err(diff) => {
                println!("FAIL  {} ({})", r.name, r.file.display());
                for line in diff.lines() {
                    println!("      {line}");
                }
            }
        }
    }
    println!(
        "{} fixture{}, {failed} failed, in {:.0} ms",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The plugin engine of a CLI command, with the user's compile cache (`WEIR_PLUGIN_CACHE`, else
/// `~/.cache/weir/plugin-cache`) so a second run skips compiling.
pub(super) fn local_engine() -> anyhow::Result<Arc<PluginEngine>> {
    let cache = std::env::var_os("WEIR_PLUGIN_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir/plugin-cache"))
        });
    Ok(PluginEngine::new(cache)?)
}

fn camel(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn scaffold(name: &str, kind: Kind, dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("`{name}` is not a valid plugin name: use letters, digits, `-` and `_`");
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("fixtures"))?;
    let ty = camel(name);
    let sdk = sdk.display().to_string().replace('\\', "/");
    let files: Vec<(PathBuf, String)> = vec![
        (
            dir.join("Cargo.toml"),
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# cdylib: the WebAssembly component; rlib: the same code natively, for `cargo test`.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-plugin = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}

[profile.release]
opt-level = 3

# A plugin is its own workspace, even inside another project's tree.
[workspace]
"#
            ),
        ),
        (
            dir.join("rust-toolchain.toml"),
            "[toolchain]\nchannel = \"stable\"\ntargets = [\"wasm32-wasip2\"]\n".to_owned(),
        ),
        (dir.join(".gitignore"), "target/\n".to_owned()),
        (dir.join("src/lib.rs"), source(kind, &ty)),
        (dir.join("fixtures/01-example.json"), fixture(kind)),
    ];
    for (path, text) in files {
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn source(kind: Kind, ty: &str) -> String {
    match kind {
        Kind::Transformer => format!(
            r#"//! A weir transformer: tags every event with who processed it.

use weir_plugin::{{Event, InitError, Outcome, Plugin, Transform}};

/// The plugin's config table from weir.toml.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {{
    /// Written to `properties.tagged_by`.
    #[serde(default = "default_tag")]
    tag: String,
}}

fn default_tag() -> String {{
    "weir".into()
}}

pub struct {ty} {{
    config: Config,
}}

impl Plugin for {ty} {{
    type Config = Config;

    fn init(config: Config) -> Result<Self, InitError> {{
        Ok({ty} {{ config }})
    }}
}}

impl Transform for {ty} {{
    fn transform(&mut self, mut event: Event) -> Outcome {{
        match event.set("properties.tagged_by", self.config.tag.as_str()) {{
            Ok(_) => Outcome::Keep(event),
            Err(e) => Outcome::Fail(e.to_string()),
        }}
    }}
}}

weir_plugin::export_transform!({ty});
"#
        ),
        Kind::Filter => format!(
            r#"//! A weir filter: drops events marked internal.

use weir_plugin::{{Event, Filter, InitError, NoConfig, Outcome, Plugin}};

pub struct {ty};

impl Plugin for {ty} {{
    type Config = NoConfig;

    fn init(_: NoConfig) -> Result<Self, InitError> {{
        Ok({ty})
    }}
}}

impl Filter for {ty} {{
    fn filter(&mut self, event: Event) -> Outcome {{
        if event.get("properties.internal") == Some(&weir_plugin::serde_json::Value::Bool(true)) {{
            return Outcome::Drop("internal event".into());
        }}
        Outcome::Keep(event)
    }}
}}

weir_plugin::export_filter!({ty});
"#
        ),
    }
}

fn fixture(kind: Kind) -> String {
    match kind {
        Kind::Transformer => r#"{
  "name": "every event is tagged",
  "config": {"tag": "my-team"},
  "input": [
    {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "m1"}
  ],
  "expect": [
    {"keep": {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "m1", "properties": {"tagged_by": "my-team"}}}
  ]
}
"#
        .to_owned(),
        Kind::Filter => r#"{
  "name": "internal events are dropped, others kept",
  "input": [
    {"type": "track", "event": "Ping", "userId": "u1", "properties": {"internal": true}},
    {"type": "track", "event": "Signed Up", "userId": "u1"}
  ],
  "expect": [
    {"drop": "internal event"},
    {"keep": {"type": "track", "event": "Signed Up", "userId": "u1"}}
  ]
}
"#
        .to_owned(),
    }
}
