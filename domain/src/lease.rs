//! Leases: which worker runs a job, and until when the other workers must keep off it.
//!
//! A worker claims a job with `Start { worker, now, lease_seconds }` and keeps it by renewing the
//! lease before it expires. Another worker may take the job over only once the lease has expired
//! (its holder is presumed dead); from then on the old holder's records are refused, so two
//! workers never both record a job's results. A holder whose lease lapsed but whom nobody took
//! over keeps its job: expiry matters only to a worker that wants the job.
//!
//! Worker names must be unique among the processes sharing a store: a worker that starts a job
//! under the name of its holder is taken for that holder (a process restarted under its old name
//! resumes its own job at once, without waiting for the lease).
//!
//! The time is the caller's (`now` in the command): the domain reads no clock. Jobs started
//! before leases existed carry none and may be taken over at any time.

use chrono::{DateTime, TimeDelta, Utc};

use crate::error::DomainError;

/// The longest lease a worker may take in one go (a day).
pub const MAX_LEASE_SECONDS: u32 = 24 * 3600;

/// A worker's claim on a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub worker: String,
    /// Until this time no other worker may take the job.
    pub until: DateTime<Utc>,
}

impl Lease {
    /// The lease a worker recorded (`until` absent: a job started before leases existed, free to
    /// take over).
    pub fn recorded(worker: &str, until: Option<DateTime<Utc>>) -> Lease {
        Lease { worker: worker.to_string(), until: until.unwrap_or(DateTime::<Utc>::MIN_UTC) }
    }

    /// The end of a lease of `lease_seconds` taken at `now`.
    pub fn end(now: DateTime<Utc>, lease_seconds: u32) -> Result<DateTime<Utc>, DomainError> {
        if !(1..=MAX_LEASE_SECONDS).contains(&lease_seconds) {
            return Err(DomainError::invalid(
                "lease_seconds",
                format!("must be between 1 and {MAX_LEASE_SECONDS}, not {lease_seconds}"),
            ));
        }
        now.checked_add_signed(TimeDelta::seconds(i64::from(lease_seconds)))
            .ok_or_else(|| DomainError::invalid("now", "is too far in the future"))
    }

    /// Whether `worker` may start (or take over) a job that `lease` holds, at `now`.
    pub fn check_start(
        lease: Option<&Lease>,
        entity: &'static str,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        match lease {
            Some(held) if held.worker != worker && held.until > now => Err(DomainError::LeaseHeld {
                entity,
                holder: held.worker.clone(),
                until: held.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }),
            _ => Ok(()),
        }
    }

    /// Whether `worker` holds `lease` (only the holder records a job's results).
    pub fn check_holder(lease: Option<&Lease>, entity: &'static str, worker: &str) -> Result<(), DomainError> {
        match lease {
            Some(held) if held.worker == worker => Ok(()),
            other => Err(DomainError::NotLeaseHolder {
                entity,
                worker: worker.to_string(),
                holder: other.map_or_else(|| "no worker".to_string(), |held| format!("worker {}", held.worker)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn another_worker_waits_for_the_lease_to_expire() {
        let lease = Lease { worker: "a".into(), until: Lease::end(at(0), 60).unwrap() };
        assert_eq!(lease.until, at(60));
        let refused = Lease::check_start(Some(&lease), "generation", "b", at(59)).unwrap_err();
        assert!(matches!(&refused, DomainError::LeaseHeld { holder, .. } if holder == "a"), "{refused}");
        assert!(refused.to_string().contains("2027-01-15T08:01:00Z"), "{refused}");
        assert_eq!(Lease::check_start(Some(&lease), "generation", "b", at(60)), Ok(()));
        // Its holder (a process restarted under its name) may start again at once.
        assert_eq!(Lease::check_start(Some(&lease), "generation", "a", at(1)), Ok(()));
        assert_eq!(Lease::check_start(None, "generation", "b", at(1)), Ok(()));
        // A job started before leases existed is free.
        assert_eq!(Lease::check_start(Some(&Lease::recorded("a", None)), "generation", "b", at(0)), Ok(()));
    }

    #[test]
    fn only_the_holder_records() {
        let lease = Lease::recorded("a", Some(at(10)));
        assert_eq!(Lease::check_holder(Some(&lease), "fine-tune", "a"), Ok(()));
        let refused = Lease::check_holder(Some(&lease), "fine-tune", "b").unwrap_err();
        assert!(refused.to_string().contains("held by worker a"), "{refused}");
        assert!(matches!(Lease::check_holder(None, "fine-tune", "a"), Err(DomainError::NotLeaseHolder { .. })));
    }

    #[test]
    fn lease_lengths_are_bounded() {
        for bad in [0, MAX_LEASE_SECONDS + 1] {
            assert!(matches!(Lease::end(at(0), bad), Err(DomainError::Invalid { field: "lease_seconds", .. })));
        }
        assert_eq!(Lease::end(at(0), MAX_LEASE_SECONDS).unwrap(), at(i64::from(MAX_LEASE_SECONDS)));
        assert!(Lease::end(DateTime::<Utc>::MAX_UTC, 1).is_err());
    }
}
