//! [`Outcome`]: what a transformer or filter decided for one event.

use crate::Event;

/// What a transformer or filter decided for one input event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Pass the event on, possibly rewritten.
    Keep(Event),
    /// Remove the event on purpose. The reason is recorded in the log as a `dropped` record.
    Drop(String),
    /// The event does not fit the plugin's expectations: it goes to the dead-letter queue with
    /// this error, from where it can be replayed.
    Fail(String),
    /// Replace the event by several events (fan-out). The host gives the i-th one the message
    /// id `{messageId}:{i}`, whatever the plugin set; an empty list is a drop. Filters may not
    /// expand: the host treats it as a failure.
    Expand(Vec<Event>),
}

impl From<Event> for Outcome {
    fn from(event: Event) -> Self {
        Self::Keep(event)
    }
}
