//! The component side of the SDK (wasm32 only): the SDK's own bindings of the contract and the
//! functions the `export_*!` macros call from the plugin's exports.
//!
//! The SDK generates bindings for a world of its own, `weir:sdk/host-imports`, that only imports
//! `weir:plugin/host` (and, through it, `weir:plugin/types`). Its custom section therefore
//! declares no export, and merging it with the plugin's world section adds nothing the plugin
//! does not implement. The exports are generated in the plugin crate by
//! `__weir_plugin_world!`, which maps `types` and `host` back to the modules below with
//! wit-bindgen's `with`, so there is one Rust type per WIT type.

use std::cell::RefCell;

use crate::destination::{
    BuildOutput, Destination, EventVerdict, Header, Rejection, Request, Response, Verdict,
};
use crate::plugin::{Filter, Plugin, Transform, init_from_json};
use crate::raw::{RawEvent, RawOutcome};

pub use wit_bindgen;

/// Bindings of the imports every plugin has; the exports live in the plugin crate.
#[allow(missing_docs, reason = "generated code")]
pub mod bindings {
    super::wit_bindgen::generate!({
        inline: "
            package weir:sdk;

            world host-imports {
                import weir:plugin/host@0.1.0;
            }
        ",
        path: "../../wit",
        world: "weir:sdk/host-imports",
        // `event`, `outcome`, `request`... are used by the exports only; generate them here so
        // the plugin crate's bindings can reuse them.
        generate_unused_types: true,
        generate_all,
    });
}

use bindings::weir::plugin::types as wit;

/// WIT `event`.
pub type WitEvent = wit::Event;
/// WIT `outcome`.
pub type WitOutcome = wit::Outcome;
/// WIT `request`.
pub type WitRequest = wit::Request;
/// WIT `response`.
pub type WitResponse = wit::Response;
/// WIT `build-output`.
pub type WitBuildOutput = wit::BuildOutput;
/// WIT `verdict`.
pub type WitVerdict = wit::Verdict;

const NOT_INITIALISED: &str =
    "plugin is not initialised: the host must call `init` before any other export";

enum State<P> {
    Uninitialised,
    InitFailed(String),
    Ready(P),
}

/// The plugin instance of a component, created by `init` and used by every later call.
///
/// A component instance runs one call at a time, so a `RefCell` in a `thread_local!` is all the
/// synchronisation needed; a re-entrant call (impossible with synchronous exports) would get a
/// `fail` outcome rather than a panic.
pub struct Instance<P> {
    state: RefCell<State<P>>,
}

impl<P: Plugin> Instance<P> {
    /// An instance before `init`.
    #[allow(
        clippy::new_without_default,
        reason = "const constructor for a thread_local"
    )]
    pub const fn new() -> Self {
        Self {
            state: RefCell::new(State::Uninitialised),
        }
    }

    /// The `init` export: builds the plugin from its JSON config. On error the instance stays
    /// unusable and every later call fails with the init error.
    pub fn init(&self, config: &str) -> Result<(), String> {
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return Err("plugin is busy: `init` called during another call".to_owned());
        };
        match init_from_json::<P>(config) {
            Ok(plugin) => {
                *state = State::Ready(plugin);
                Ok(())
            }
            Err(error) => {
                *state = State::InitFailed(error.clone());
                Err(error)
            }
        }
    }

    /// Runs `call` on the plugin, or says why there is none to run it on.
    fn with<R>(&self, call: impl FnOnce(&mut P) -> R) -> Result<R, String> {
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return Err("plugin is busy: re-entrant call".to_owned());
        };
        match &mut *state {
            State::Ready(plugin) => Ok(call(plugin)),
            State::Uninitialised => Err(NOT_INITIALISED.to_owned()),
            State::InitFailed(error) => Err(format!("plugin failed to initialise: {error}")),
        }
    }
}

fn raw_event(event: WitEvent) -> RawEvent {
    RawEvent {
        payload: event.payload,
        source: event.source,
        offset: event.offset,
    }
}

fn wit_outcome(outcome: RawOutcome) -> WitOutcome {
    match outcome {
        RawOutcome::Keep(payload) => WitOutcome::Keep(payload),
        RawOutcome::Drop(reason) => WitOutcome::Drop(reason),
        RawOutcome::Fail(error) => WitOutcome::Fail(error),
        RawOutcome::Expand(payloads) => WitOutcome::Expand(payloads),
    }
}

fn run_outcomes<P>(
    instance: &Instance<P>,
    batch: Vec<WitEvent>,
    call: impl FnOnce(&mut P, Vec<RawEvent>) -> Vec<RawOutcome>,
) -> Vec<WitOutcome>
where
    P: Plugin,
{
    let count = batch.len();
    let batch: Vec<RawEvent> = batch.into_iter().map(raw_event).collect();
    match instance.with(|plugin| call(plugin, batch)) {
        Ok(outcomes) => outcomes.into_iter().map(wit_outcome).collect(),
        Err(error) => vec![WitOutcome::Fail(error); count],
    }
}

/// The `transform` export.
pub fn transform<P: Transform>(instance: &Instance<P>, batch: Vec<WitEvent>) -> Vec<WitOutcome> {
    run_outcomes(instance, batch, P::transform_raw)
}

/// The `filter` export.
pub fn filter<P: Filter>(instance: &Instance<P>, batch: Vec<WitEvent>) -> Vec<WitOutcome> {
    run_outcomes(instance, batch, P::filter_raw)
}

fn header_from_wit(header: wit::Header) -> Header {
    Header {
        name: header.name,
        value: header.value,
    }
}

fn header_to_wit(header: Header) -> wit::Header {
    wit::Header {
        name: header.name,
        value: header.value,
    }
}

fn request_from_wit(request: WitRequest) -> Request {
    Request {
        method: request.method,
        url: request.url,
        headers: request.headers.into_iter().map(header_from_wit).collect(),
        body: request.body,
        events: request.events,
    }
}

fn request_to_wit(request: Request) -> WitRequest {
    WitRequest {
        method: request.method,
        url: request.url,
        headers: request.headers.into_iter().map(header_to_wit).collect(),
        body: request.body,
        events: request.events,
    }
}

fn rejection_to_wit(rejection: Rejection) -> wit::Rejection {
    wit::Rejection {
        index: rejection.index,
        reason: rejection.reason,
    }
}

/// The `build` export.
pub fn build<P: Destination>(instance: &Instance<P>, batch: Vec<WitEvent>) -> WitBuildOutput {
    let count = batch.len();
    let batch: Vec<RawEvent> = batch.into_iter().map(raw_event).collect();
    let output = instance
        .with(|plugin| plugin.build_raw(batch))
        .unwrap_or_else(|error| BuildOutput {
            requests: Vec::new(),
            rejections: (0u32..)
                .take(count)
                .map(|index| Rejection {
                    index,
                    reason: error.clone(),
                })
                .collect(),
        });
    WitBuildOutput {
        requests: output.requests.into_iter().map(request_to_wit).collect(),
        rejections: output
            .rejections
            .into_iter()
            .map(rejection_to_wit)
            .collect(),
    }
}

/// The `classify` export.
pub fn classify<P: Destination>(
    instance: &Instance<P>,
    request: WitRequest,
    response: WitResponse,
) -> WitVerdict {
    let request = request_from_wit(request);
    let response = Response {
        status: response.status,
        headers: response.headers.into_iter().map(header_from_wit).collect(),
        body: response.body,
    };
    // Without a plugin nobody can read the answer; retrying keeps the events (the host caps
    // retries and dead-letters them in the end).
    match instance.with(|plugin| plugin.classify(&request, &response)) {
        Ok(verdict) => verdict_to_wit(verdict),
        Err(error) => {
            crate::log(crate::Level::Error, &error);
            WitVerdict::Retry(None)
        }
    }
}

fn verdict_to_wit(verdict: Verdict) -> WitVerdict {
    match verdict {
        Verdict::Done => WitVerdict::Done,
        Verdict::Retry(after_ms) => WitVerdict::Retry(after_ms),
        Verdict::Drop(reason) => WitVerdict::Drop(reason),
        Verdict::PerEvent(verdicts) => WitVerdict::PerEvent(
            verdicts
                .into_iter()
                .map(|verdict| match verdict {
                    EventVerdict::Done => wit::EventVerdict::Done,
                    EventVerdict::Retry => wit::EventVerdict::Retry,
                    EventVerdict::Drop(reason) => wit::EventVerdict::Drop(reason),
                })
                .collect(),
        ),
    }
}
