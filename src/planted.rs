//! Planted bugs: deliberate, known faults in the server that the simulator must catch,
//! which is how detcd shows that its checkers find real bugs and not only pass.
//!
//! They exist only with the `planted-bugs` cargo feature, which a build without debug
//! assertions (a release build) refuses with a compile error: without the feature
//! [`active`] is a constant `false` and every planted branch compiles away.
//! With it, the bug named by the `DETCD_PLANTED_BUG` environment variable (one of
//! [`Bug::name`]) is switched on for the whole process, read once. Each fault point in the
//! server is one `if planted::active(Bug::X)` at the place the bug would live, cheap and
//! deterministic, in the spirit of FoundationDB's `buggify`.

// A binary built for use (with optimizations and without debug assertions, as
// `cargo build --release` does) must never carry planted bugs: one stray
// `DETCD_PLANTED_BUG` in its environment would make it lose or reorder data on purpose.
// The feature is for the simulator's debug builds only (`ci/planted-bugs.sh`), so any
// other combination is refused at compile time rather than trusted to documentation.
#[cfg(all(feature = "planted-bugs", not(debug_assertions)))]
compile_error!(
    "the `planted-bugs` feature builds deliberate bugs into detcd and is only allowed with \
     debug assertions (a debug build, as ci/planted-bugs.sh makes); a release build must \
     never carry planted bugs"
);

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Serve linearizable reads from local state without a ReadIndex barrier: a follower
    /// behind the leader returns stale data.
    StaleRead,
    /// Report raft log writes as durable before the WAL fsync: a crash loses entries the
    /// member already acknowledged or voted on.
    AckBeforeFsync,
    /// Apply a committed entry twice after a restart: the backend's consistent index is
    /// ignored for one entry.
    DoubleApply,
    /// A member that loses leadership keeps its lease clock running (so it never hears of
    /// renewals through the new leader) and its expiry proposals, forwarded to the new
    /// leader, are applied (the leader-term check on expiry is skipped): leases renewed
    /// in time are revoked.
    StaleLeaseRevoke,
    /// Deliver the events of one applied batch to watchers in reverse order.
    WatchReorder,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 5] = [
        Bug::StaleRead,
        Bug::AckBeforeFsync,
        Bug::DoubleApply,
        Bug::StaleLeaseRevoke,
        Bug::WatchReorder,
    ];

    /// The name `DETCD_PLANTED_BUG` selects it by.
    pub fn name(self) -> &'static str {
        match self {
            Bug::StaleRead => "stale-read",
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::DoubleApply => "double-apply",
            Bug::StaleLeaseRevoke => "stale-lease-revoke",
            Bug::WatchReorder => "watch-reorder",
        }
    }

    /// The bug with this name, if any.
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Whether `bug` is switched on in this process.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub const fn active(_bug: Bug) -> bool {
    false
}

/// Whether `bug` is switched on in this process.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: Bug) -> bool {
    static SELECTED: std::sync::OnceLock<Option<Bug>> = std::sync::OnceLock::new();
    *SELECTED.get_or_init(|| {
        std::env::var("DETCD_PLANTED_BUG")
            .ok()
            .and_then(|name| Bug::from_name(&name))
    }) == Some(bug)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in Bug::ALL {
            assert_eq!(Bug::from_name(bug.name()), Some(bug));
        }
        assert_eq!(Bug::from_name("no-such-bug"), None);
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[test]
    fn nothing_is_planted_without_the_feature() {
        std::env::set_var("DETCD_PLANTED_BUG", "stale-read");
        assert!(Bug::ALL.into_iter().all(|b| !active(b)));
    }
}
