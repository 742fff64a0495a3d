//! The test kit ([`tracker_testkit`]), with the daemon under test bound to this package's
//! `tracker` binary.
//!
//! These tests need root (they load eBPF programs). They never skip: without root or BPF the
//! daemon fails to start and the test fails with the daemon's own error line.

pub use tracker_testkit::*;

/// This package's `tracker` binary, as cargo built it for these tests.
pub struct ThisPackagesTracker;

impl DaemonBinary for ThisPackagesTracker {
    const PATH: &'static str = env!("CARGO_BIN_EXE_tracker");
}

/// The daemon under test.
pub type Daemon = tracker_testkit::Daemon<ThisPackagesTracker>;
