//! Given/when/then helpers for the aggregate tests.

use crate::aggregate::Aggregate;
use crate::error::DomainError;

/// The state after `events`.
pub fn given<A: Aggregate>(events: &[A::Event]) -> A {
    A::from_history(events)
}

/// Asserts that a decision was rejected with an error matching `expected`.
#[track_caller]
pub fn then_error<E: std::fmt::Debug>(result: Result<E, DomainError>, expected: impl Fn(&DomainError) -> bool) {
    match result {
        Ok(events) => panic!("expected a rejection, got events {events:?}"),
        Err(error) => assert!(expected(&error), "unexpected error: {error:?} ({error})"),
    }
}

pub trait ApplyAll: Aggregate {
    /// This state with `events` applied.
    fn apply_all(mut self, events: &[Self::Event]) -> Self {
        for event in events {
            self.evolve(event);
        }
        self
    }

    /// Decides `command` and applies the resulting events, panicking on rejection.
    #[track_caller]
    fn then(self, command: Self::Command) -> (Self, Vec<Self::Event>) {
        let events = match self.decide(command) {
            Ok(events) => events,
            Err(error) => panic!("command rejected: {error}"),
        };
        (self.apply_all(&events), events)
    }
}

impl<A: Aggregate> ApplyAll for A {}
