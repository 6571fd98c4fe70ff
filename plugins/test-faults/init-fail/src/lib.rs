//! Fault-test transformer whose `init` always fails. The host must reject the plugin version
//! with the error below and keep serving with the previous version; calls made anyway get
//! `fail` outcomes carrying the init error.

use weir_plugin::{Event, InitError, NoConfig, Outcome, Plugin, Transform};

/// The error `init` returns.
pub const INIT_ERROR: &str = "init-fail: this test plugin refuses every config on purpose";

/// See the crate docs.
pub struct InitFail;

impl Plugin for InitFail {
    type Config = NoConfig;

    fn init(_: NoConfig) -> Result<Self, InitError> {
        Err(INIT_ERROR.into())
    }
}

impl Transform for InitFail {
    fn transform(&mut self, event: Event) -> Outcome {
        Outcome::Keep(event)
    }
}

weir_plugin::export_transform!(InitFail);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_fails_with_the_documented_error() {
        assert_eq!(
            weir_plugin::init_from_json::<InitFail>("{}").err(),
            Some(INIT_ERROR.to_owned())
        );
    }
}
