//! The ingest listener's routes.

use crate::log::EventType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v1/batch`: `{"batch": [events], "sentAt"?, "writeKey"?}`.
    Batch,
    /// `/v1/import`: a batch of historical events (no clock-skew correction).
    Import,
    /// `/v1/track` ... and the browser short forms `/v1/t` ...: one event.
    Single(EventType),
    /// `/v1/m`: analytics.js self-metrics; accepted and dropped.
    SdkMetrics,
    Live,
    Ready,
}

impl Route {
    pub fn parse(path: &str) -> Option<Route> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        Some(match path {
            "/v1/batch" => Route::Batch,
            "/v1/import" => Route::Import,
            "/v1/track" | "/v1/t" => Route::Single(EventType::Track),
            "/v1/identify" | "/v1/i" => Route::Single(EventType::Identify),
            "/v1/page" | "/v1/p" => Route::Single(EventType::Page),
            "/v1/screen" | "/v1/s" => Route::Single(EventType::Screen),
            "/v1/group" | "/v1/g" => Route::Single(EventType::Group),
            "/v1/alias" | "/v1/a" => Route::Single(EventType::Alias),
            "/v1/m" => Route::SdkMetrics,
            "/health/live" => Route::Live,
            "/health/ready" => Route::Ready,
            _ => return None,
        })
    }

    /// Label for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Route::Batch => "batch",
            Route::Import => "import",
            Route::Single(t) => t.as_str(),
            Route::SdkMetrics => "sdk_metrics",
            Route::Live => "live",
            Route::Ready => "ready",
        }
    }

    pub fn is_health(self) -> bool {
        matches!(self, Route::Live | Route::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_and_trailing_slashes() {
        assert_eq!(Route::parse("/v1/t"), Some(Route::Single(EventType::Track)));
        assert_eq!(Route::parse("/v1/batch/"), Some(Route::Batch));
        assert_eq!(Route::parse("/v1/x"), None);
        assert_eq!(Route::parse("/"), None);
    }
}
