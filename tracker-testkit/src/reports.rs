//! Readers of the daemon's JSON reports.

use serde_json::Value;

/// Sum of a numeric field over reports.
pub fn sum(reports: &[Value], field: &str) -> f64 {
    reports
        .iter()
        .map(|report| {
            report[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing: {report}"))
        })
        .sum()
}

/// Maximum of an integer field over reports.
pub fn max(reports: &[Value], field: &str) -> u64 {
    reports
        .iter()
        .map(|report| {
            report[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} missing: {report}"))
        })
        .max()
        .unwrap_or(0)
}
