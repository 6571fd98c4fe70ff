//! The `export_*!` macros that turn a plugin type into a component's exports.
//!
//! # One world per component, and how the SDK keeps it so
//!
//! A component targets exactly one world of the contract (`transformer`, `filter` or
//! `destination`). `wit_bindgen::generate!` leaves a custom section describing its world in the
//! object file, and the SDK must not generate the three worlds itself: with its `#[used]` link
//! helpers, every plugin binary would carry all three sections, `wasm-component-ld` would merge
//! them into one world, and a transformer would claim to export `filter-plugin` and
//! `destination-plugin` too, failing to link for lack of those functions. Cargo features per
//! world do not fix this either: features are unified across the packages of one `cargo build`,
//! so building a transformer and a filter together would again give both all worlds.
//!
//! Instead:
//!
//! - the SDK generates, for itself, a world that only *imports* `weir:plugin/host` (see
//!   `glue.rs`): the host functions and every shared type, no export;
//! - each `export_*!` macro expands, **in the plugin's crate**, `wit_bindgen::generate!` for the
//!   plugin's one world, with the contract's WIT text baked in by the SDK's `build.rs` and
//!   `with` pointing `types` and `host` back at the SDK's bindings.
//!
//! So each plugin binary carries its own world's section plus the SDK's import-only section,
//! and any set of plugins builds in one `cargo build --target wasm32-wasip2 -p ... -p ...`.
//!
//! On other targets the macros only check that the type implements the right trait, so plugin
//! crates compile (and their tests run) natively.
//!
//! The generated code names the SDK `::weir_plugin`: depend on it under that name, without
//! renaming it in `Cargo.toml`.

// `__weir_plugin_world!`, generated from `wit/plugin.wit` by build.rs.
include!(concat!(env!("OUT_DIR"), "/world_macro.rs"));

/// Exports a [`Transform`](crate::Transform) plugin as the component's `transformer` world.
///
/// Use once per crate, at the crate root of a `cdylib`:
///
/// ```ignore
/// weir_plugin::export_transform!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_transform {
    ($plugin:ty) => {
        #[doc(hidden)]
        type __WeirPluginTransform = $plugin;
        const _: () = $crate::__private::assert_transform::<__WeirPluginTransform>();

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __weir_plugin_transform_exports {
            $crate::__weir_plugin_world!("transformer");

            ::std::thread_local! {
                static INSTANCE: $crate::__private::Instance<super::__WeirPluginTransform> =
                    const { $crate::__private::Instance::new() };
            }

            struct Component;

            impl self::exports::weir::plugin::transform_plugin::Guest for Component {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    INSTANCE.with(|instance| instance.init(&config))
                }

                fn transform(
                    batch: ::std::vec::Vec<$crate::__private::WitEvent>,
                ) -> ::std::vec::Vec<$crate::__private::WitOutcome> {
                    INSTANCE.with(|instance| $crate::__private::transform(instance, batch))
                }
            }

            export!(Component);
        }
    };
}

/// Exports a [`Filter`](crate::Filter) plugin as the component's `filter` world.
///
/// ```ignore
/// weir_plugin::export_filter!(MyFilter);
/// ```
#[macro_export]
macro_rules! export_filter {
    ($plugin:ty) => {
        #[doc(hidden)]
        type __WeirPluginFilter = $plugin;
        const _: () = $crate::__private::assert_filter::<__WeirPluginFilter>();

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __weir_plugin_filter_exports {
            $crate::__weir_plugin_world!("filter");

            ::std::thread_local! {
                static INSTANCE: $crate::__private::Instance<super::__WeirPluginFilter> =
                    const { $crate::__private::Instance::new() };
            }

            struct Component;

            impl self::exports::weir::plugin::filter_plugin::Guest for Component {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    INSTANCE.with(|instance| instance.init(&config))
                }

                fn filter(
                    batch: ::std::vec::Vec<$crate::__private::WitEvent>,
                ) -> ::std::vec::Vec<$crate::__private::WitOutcome> {
                    INSTANCE.with(|instance| $crate::__private::filter(instance, batch))
                }
            }

            export!(Component);
        }
    };
}

/// Exports a [`Destination`](crate::Destination) plugin as the component's `destination`
/// world.
///
/// ```ignore
/// weir_plugin::export_destination!(MyDestination);
/// ```
#[macro_export]
macro_rules! export_destination {
    ($plugin:ty) => {
        #[doc(hidden)]
        type __WeirPluginDestination = $plugin;
        const _: () = $crate::__private::assert_destination::<__WeirPluginDestination>();

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __weir_plugin_destination_exports {
            $crate::__weir_plugin_world!("destination");

            ::std::thread_local! {
                static INSTANCE: $crate::__private::Instance<super::__WeirPluginDestination> =
                    const { $crate::__private::Instance::new() };
            }

            struct Component;

            impl self::exports::weir::plugin::destination_plugin::Guest for Component {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    INSTANCE.with(|instance| instance.init(&config))
                }

                fn build(
                    batch: ::std::vec::Vec<$crate::__private::WitEvent>,
                ) -> $crate::__private::WitBuildOutput {
                    INSTANCE.with(|instance| $crate::__private::build(instance, batch))
                }

                fn classify(
                    request: $crate::__private::WitRequest,
                    response: $crate::__private::WitResponse,
                ) -> $crate::__private::WitVerdict {
                    INSTANCE
                        .with(|instance| $crate::__private::classify(instance, request, response))
                }
            }

            export!(Component);
        }
    };
}
