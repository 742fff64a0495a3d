//! The classic Prometheus text format (0.0.4), derived from the OpenMetrics text the client
//! library writes. The two differ only in their framing for what this endpoint serves:
//! OpenMetrics names a counter family without its `_total` suffix (its samples carry it),
//! writes `# UNIT` lines and ends with `# EOF`; the classic format names the family as its
//! samples are named, knows no units and no end marker, and calls an untyped family
//! `untyped`. Sample lines are the same in both.

/// Rewrites OpenMetrics text into the classic text format.
pub(super) fn classic_from_openmetrics(openmetrics: &str) -> String {
    let mut classic = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE, which decides the family's classic name.
    let mut pending_help: Option<(&str, String)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            flush_help(&mut classic, pending_help.take(), None);
            pending_help = Some((name, help.to_owned()));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            let help = pending_help.take().filter(|(of, _)| *of == name);
            flush_help(&mut classic, help, Some(&family));
            classic.push_str(&format!("# TYPE {family} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut classic, pending_help.take(), None);
            classic.push_str(line);
            classic.push('\n');
        }
    }
    flush_help(&mut classic, pending_help, None);
    classic
}

/// Writes a HELP line held back for its TYPE, under `family` when that is known.
fn flush_help(out: &mut String, help: Option<(&str, String)>, family: Option<&str>) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {} {text}\n", family.unwrap_or(name)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_sample_name_and_units_and_eof_go() {
        let openmetrics = "\
# HELP tracker_busy_seconds Busy-seconds.
# TYPE tracker_busy_seconds counter
# UNIT tracker_busy_seconds seconds
tracker_busy_seconds_total{listener=\"127.0.0.1:80\"} 2.0
# HELP tracker_connections Connections open.
# TYPE tracker_connections gauge
tracker_connections{listener=\"127.0.0.1:80\"} 1
# HELP tracker_lifetime_seconds How long.
# TYPE tracker_lifetime_seconds histogram
# UNIT tracker_lifetime_seconds seconds
tracker_lifetime_seconds_sum 0.5
tracker_lifetime_seconds_count 1
tracker_lifetime_seconds_bucket{le=\"+Inf\"} 1
# TYPE tracker_mystery unknown
tracker_mystery 3
# EOF
";
        let expected = "\
# HELP tracker_busy_seconds_total Busy-seconds.
# TYPE tracker_busy_seconds_total counter
tracker_busy_seconds_total{listener=\"127.0.0.1:80\"} 2.0
# HELP tracker_connections Connections open.
# TYPE tracker_connections gauge
tracker_connections{listener=\"127.0.0.1:80\"} 1
# HELP tracker_lifetime_seconds How long.
# TYPE tracker_lifetime_seconds histogram
tracker_lifetime_seconds_sum 0.5
tracker_lifetime_seconds_count 1
tracker_lifetime_seconds_bucket{le=\"+Inf\"} 1
# TYPE tracker_mystery untyped
tracker_mystery 3
";
        assert_eq!(classic_from_openmetrics(openmetrics), expected);
    }
}
