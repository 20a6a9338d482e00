//! The restart policy: after a task ends, restart it (after how long) or give up.
//!
//! Nomad's rules (`client/allocrunner/taskrunner/restarts`): restarts are counted within an
//! interval that opens at the first restart; up to `attempts` restarts wait `delay` each; one
//! more exit in the same interval either fails the task (`mode = "fail"`) or waits until the
//! interval ends and starts counting again (`mode = "delay"`). Service tasks restart on any
//! exit, batch tasks only when they failed. Time is passed in, so every decision is testable.

use std::time::{Duration, Instant};

use flotilla_proto::agent::v1 as pb;

/// `mode` of a restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    Fail,
    Delay,
}

/// A task's `restart { … }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub attempts: u32,
    pub interval: Duration,
    pub delay: Duration,
    pub mode: RestartMode,
}

impl RestartPolicy {
    /// Nomad's default for service jobs: 2 attempts in 30 minutes, 15 s apart, then fail.
    pub fn service_default() -> Self {
        Self {
            attempts: 2,
            interval: Duration::from_secs(30 * 60),
            delay: Duration::from_secs(15),
            mode: RestartMode::Fail,
        }
    }

    /// From the wire; a missing block is [`service_default`](Self::service_default), and a
    /// mode other than `delay` means `fail`.
    pub fn from_proto(p: Option<&pb::RestartPolicy>) -> Self {
        let Some(p) = p else {
            return Self::service_default();
        };
        Self {
            attempts: p.attempts,
            interval: Duration::from_millis(p.interval_ms),
            delay: Duration::from_millis(p.delay_ms),
            mode: if p.mode.eq_ignore_ascii_case("delay") {
                RestartMode::Delay
            } else {
                RestartMode::Fail
            },
        }
    }
}

/// Whether a successful exit counts as the end of the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Long-running: restart on any exit.
    Service,
    /// Run to completion: a successful exit is final.
    Batch,
}

impl JobKind {
    /// From the job's type: `batch` and `sysbatch` run to completion, the rest run forever.
    pub fn from_job_type(job_type: &str) -> Self {
        match job_type {
            "batch" | "sysbatch" => Self::Batch,
            _ => Self::Service,
        }
    }
}

/// What to do after a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after `delay`.
    Restart { delay: Duration, reason: String },
    /// Leave it dead; `failed` when the policy gave up (rather than the task completing).
    Stop { failed: bool, reason: String },
}

/// Counts restarts of one task.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    kind: JobKind,
    count: u32,
    window_start: Option<Instant>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy, kind: JobKind) -> Self {
        Self {
            policy,
            kind,
            count: 0,
            window_start: None,
        }
    }

    /// The task ended at `now`; `success` is a clean exit (code 0, no signal, no driver
    /// error). `recoverable = false` (a start failure that can never succeed, such as a bad
    /// config) skips the policy and fails at once.
    pub fn decide(&mut self, now: Instant, success: bool, recoverable: bool) -> Decision {
        if !recoverable {
            return Decision::Stop {
                failed: true,
                reason: "Error was unrecoverable".into(),
            };
        }
        if success && self.kind == JobKind::Batch {
            return Decision::Stop {
                failed: false,
                reason: "Restart unnecessary as task terminated successfully".into(),
            };
        }
        if self.policy.attempts == 0 && self.policy.mode == RestartMode::Fail {
            return Decision::Stop {
                failed: true,
                reason: "Policy allows no restarts".into(),
            };
        }
        let start = match self.window_start {
            Some(start) if now < start + self.policy.interval => start,
            _ => {
                self.count = 0;
                self.window_start = Some(now);
                now
            }
        };
        self.count += 1;
        if self.count <= self.policy.attempts {
            return Decision::Restart {
                delay: self.policy.delay,
                reason: "Restart within policy".into(),
            };
        }
        let interval = humantime::format_duration(self.policy.interval);
        match self.policy.mode {
            RestartMode::Fail => Decision::Stop {
                failed: true,
                reason: format!(
                    "Exceeded allowed attempts {} in interval {interval} and mode is \"fail\"",
                    self.policy.attempts
                ),
            },
            RestartMode::Delay => Decision::Restart {
                // Wait out the interval (at least the usual delay), then a new one opens.
                delay: (start + self.policy.interval)
                    .saturating_duration_since(now)
                    .max(self.policy.delay),
                reason: format!(
                    "Exceeded allowed attempts {} in interval {interval} and mode is \"delay\", waiting until the interval ends",
                    self.policy.attempts
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, mode: RestartMode) -> RestartPolicy {
        RestartPolicy {
            attempts,
            interval: Duration::from_secs(60),
            delay: Duration::from_secs(1),
            mode,
        }
    }

    fn restart_delay(d: Decision) -> Duration {
        match d {
            Decision::Restart { delay, .. } => delay,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn fail_mode_gives_up_after_attempts_within_the_interval() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(policy(2, RestartMode::Fail), JobKind::Service);
        assert_eq!(
            restart_delay(t.decide(t0, false, true)),
            Duration::from_secs(1)
        );
        assert_eq!(
            restart_delay(t.decide(t0 + Duration::from_secs(5), false, true)),
            Duration::from_secs(1)
        );
        match t.decide(t0 + Duration::from_secs(10), false, true) {
            Decision::Stop { failed, reason } => {
                assert!(failed);
                assert!(reason.contains("Exceeded allowed attempts 2"), "{reason}");
                assert!(reason.contains("\"fail\""), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_interval_resets_the_count() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(policy(1, RestartMode::Fail), JobKind::Service);
        restart_delay(t.decide(t0, false, true));
        // 61 s later the first interval is over: this is restart 1 of a new interval.
        restart_delay(t.decide(t0 + Duration::from_secs(61), false, true));
        assert!(matches!(
            t.decide(t0 + Duration::from_secs(62), false, true),
            Decision::Stop { failed: true, .. }
        ));
    }

    #[test]
    fn delay_mode_waits_for_the_interval_to_end() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(policy(1, RestartMode::Delay), JobKind::Service);
        restart_delay(t.decide(t0, false, true));
        let d = restart_delay(t.decide(t0 + Duration::from_secs(20), false, true));
        assert_eq!(d, Duration::from_secs(40));
        // After the wait a new interval starts with a fresh allowance.
        let d = restart_delay(t.decide(t0 + Duration::from_secs(61), false, true));
        assert_eq!(d, Duration::from_secs(1));
    }

    #[test]
    fn service_tasks_restart_on_success_batch_tasks_do_not() {
        let t0 = Instant::now();
        let mut svc = RestartTracker::new(policy(3, RestartMode::Fail), JobKind::Service);
        restart_delay(svc.decide(t0, true, true));
        let mut batch = RestartTracker::new(policy(3, RestartMode::Fail), JobKind::Batch);
        assert!(matches!(
            batch.decide(t0, true, true),
            Decision::Stop { failed: false, .. }
        ));
        restart_delay(batch.decide(t0, false, true));
    }

    #[test]
    fn zero_attempts_and_unrecoverable_errors_fail_at_once() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new(policy(0, RestartMode::Fail), JobKind::Service);
        assert!(matches!(
            t.decide(t0, false, true),
            Decision::Stop { failed: true, .. }
        ));
        let mut t = RestartTracker::new(policy(5, RestartMode::Delay), JobKind::Service);
        assert!(matches!(
            t.decide(t0, false, false),
            Decision::Stop { failed: true, .. }
        ));
        // Zero attempts in delay mode: every exit waits out the interval.
        let mut t = RestartTracker::new(policy(0, RestartMode::Delay), JobKind::Service);
        assert_eq!(
            restart_delay(t.decide(t0, false, true)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn policy_from_the_wire() {
        assert_eq!(
            RestartPolicy::from_proto(None),
            RestartPolicy::service_default()
        );
        let p = RestartPolicy::from_proto(Some(&pb::RestartPolicy {
            attempts: 3,
            interval_ms: 5_000,
            delay_ms: 250,
            mode: "delay".into(),
        }));
        assert_eq!(p.attempts, 3);
        assert_eq!(p.interval, Duration::from_secs(5));
        assert_eq!(p.delay, Duration::from_millis(250));
        assert_eq!(p.mode, RestartMode::Delay);
    }
}
