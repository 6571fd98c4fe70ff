//! Host bindings for the plugin contract in `wit/` — the only `bindgen!` in the host.
//!
//! One module per world; the shared `types` and `host` interfaces are generated once (in
//! `transformer`) and reused by the other worlds, so one `Host` implementation serves all.

pub mod transformer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transformer",
    });
}

pub mod filter {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
        with: {
            "weir:plugin/types": super::transformer::weir::plugin::types,
            "weir:plugin/host": super::transformer::weir::plugin::host,
        },
    });
}

pub mod destination {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "destination",
        with: {
            "weir:plugin/types": super::transformer::weir::plugin::types,
            "weir:plugin/host": super::transformer::weir::plugin::host,
        },
    });
}

pub use transformer::weir::plugin::host::{Host, add_to_linker as add_host_to_linker};
pub use transformer::weir::plugin::types;
