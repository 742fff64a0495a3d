//! The outputs operators rely on: the JSON lines schema documented in the README, the
//! systemd unit's command line, eBPF log messages reaching the daemon's log, a start-up log
//! read at a glance, and man pages that document every flag.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use serde_json::Value;

use crate::support::{Daemon, connect_many, free_port, note_for_this_kernel};

/// The README's JSON field table: field name → type ("integer", "string or null", …).
fn documented_schema() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("reading README.md");
    let start = readme
        .find("<!-- json-schema")
        .expect("README.md has the json-schema marker");
    let mut schema = BTreeMap::new();
    for line in readme[start..]
        .lines()
        .skip_while(|line| !line.starts_with("| field"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        schema.insert(name.to_owned(), cells[2].to_owned());
    }
    assert!(
        schema.len() > 20,
        "schema table not found or too short: {schema:?}"
    );
    schema
}

fn has_type(value: &Value, documented: &str) -> bool {
    documented.split(" or ").any(|kind| match kind {
        "integer" => value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        other => panic!("README documents an unknown type {other:?}"),
    })
}

#[test]
fn json_lines_match_the_documented_schema() {
    let schema = documented_schema();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut daemon = Daemon::start(&["--interval", "0.5", "--port", &addr.port().to_string()]);
    // Some traffic, so that the reports carry non-zero figures of every kind.
    let mut conns = connect_many(&listener, addr, 3);
    conns[0]
        .client
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let first = conns.remove(0);
    first.close();
    let reports = daemon.reports_until(&addr.to_string(), |report| {
        report["closed"] == 1 || report["curr"] == 2 && report["opened"] == 0
    });
    for report in &reports {
        let object = report.as_object().expect("each line is a JSON object");
        let fields: Vec<&String> = object.keys().collect();
        let documented: Vec<&String> = schema.keys().collect();
        let mut sorted = fields.clone();
        sorted.sort();
        assert_eq!(
            sorted, documented,
            "fields differ from the README's table: {report}"
        );
        for (name, kind) in &schema {
            assert!(
                has_type(&report[name], kind),
                "{name} should be {kind}: {report}"
            );
        }
        assert_eq!(report["version"], 1);
        assert_eq!(report["errors"].as_object().unwrap().len(), 6, "{report}");
    }
    drop(conns);
}

#[test]
fn the_service_unit_command_line_runs() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/tracker.service"
    ))
    .expect("reading dist/tracker.service");
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart line");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/tracker"));
    // The same flags, on a free port instead of the unit's fixed one, for one second.
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let args: Vec<String> = words
        .map(|word| {
            if word.starts_with("127.0.0.1:") {
                metrics.clone()
            } else {
                word.to_owned()
            }
        })
        .collect();
    let output = Command::new(env!("CARGO_BIN_EXE_tracker"))
        .args(&args)
        .args([
            "--duration",
            "1",
            "--port",
            &free_port("127.0.0.1").to_string(),
        ])
        .output()
        .expect("running tracker");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn ebpf_log_messages_reach_the_daemon_log() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut daemon = Daemon::start_with_log_level(
        "json",
        "debug",
        &["--interval", "0.5", "--port", &addr.port().to_string()],
    );
    // An HTTP/2 preface followed by a frame header of a type that does not exist: the kernel's
    // frame walk gives up and says so through aya-log.
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\xff\x00\x00\x00\x00\x01")
        .unwrap();
    let mut received = [0u8; 33];
    std::io::Read::read_exact(&mut server, &mut received).unwrap();
    daemon.wait_for_log("HTTP/2 frame walk lost on socket");
    let report = daemon.reports_until(&addr.to_string(), |report| report["sessions_unknown"] == 1);
    assert_eq!(report.last().unwrap()["errs"], 0);
}

/// The tracefs mounted at `/sys/kernel/tracing` in this thread's mount namespace: its
/// mountinfo line, if any.
fn tracefs_mount() -> Option<String> {
    std::fs::read_to_string("/proc/thread-self/mountinfo")
        .expect("reading mountinfo")
        .lines()
        .find(|line| line.contains(" /sys/kernel/tracing ") && line.contains(" - tracefs "))
        .map(str::to_owned)
}

/// Gives the calling thread (and the processes it starts) a mount namespace of its own with
/// no tracefs mounted, as on a freshly booted host, whatever the machine and the tests running
/// beside this one have mounted.
fn private_mounts_without_tracefs() {
    // SAFETY: unshare and mount with valid NUL-terminated strings; CLONE_NEWNS affects only
    // the calling thread.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let root = c"/";
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "making mounts private: {}",
            std::io::Error::last_os_error()
        );
        for place in [
            c"/sys/kernel/tracing",
            c"/sys/kernel/debug/tracing",
            c"/sys/kernel/debug",
        ] {
            while libc::umount2(place.as_ptr(), libc::MNT_DETACH) == 0 {}
        }
    }
    assert_eq!(tracefs_mount(), None, "tracefs is still mounted");
}

#[test]
fn tracefs_left_mounted_by_a_killed_daemon_is_unmounted_by_the_next() {
    std::thread::spawn(|| {
        private_mounts_without_tracefs();
        // Classic tracepoints are the hooks that need tracefs.
        let args = ["--classic-tracepoints", "--interval", "1"];
        let killed = Daemon::start(&args);
        assert!(killed.has_logged("mounted tracefs at /sys/kernel/tracing"));
        killed.kill();
        let left = tracefs_mount().expect("a killed daemon cannot unmount tracefs");

        let mut next = Daemon::start(&args);
        assert!(
            next.log_until_now().contains("did not exit cleanly"),
            "the left-over mount was not recognised: {left}"
        );
        let (_, status) = next.terminate();
        assert!(status.success(), "{status:?}");
        assert_eq!(tracefs_mount(), None, "left mounted after: {left}");
    })
    .join()
    .expect("the test thread");
}

#[test]
fn the_kernel_takes_the_compare_and_swap_the_gauges_need() {
    // Every kernel of the matrix has it (5.12+): a probe that says otherwise is broken, and
    // the daemon would refuse to start.
    assert!(
        tracker::kernel::bpf_atomics::compare_and_swap_supported().expect("running the probe"),
        "the probe found no BPF compare-and-swap"
    );
}

/// What an operator reads at start-up fits a glance: at the default level a few short lines,
/// one per capability this kernel cannot serve saying what that costs; why each hook was
/// refused (system call errors, verifier output) only at debug level.
#[test]
fn the_start_up_log_is_a_few_short_lines_with_the_details_at_debug_level() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let args = ["--interval", "0.5", "--port", &port];

    let daemon = Daemon::start_with_log_level("json", "info", &args);
    let start_up = daemon.log().to_vec();
    drop(daemon);
    assert!(start_up.len() <= 5, "more than 5 lines: {start_up:#?}");
    for line in &start_up {
        assert!(line.len() < 200, "{} characters: {line}", line.len());
        for detail in [
            "os error",
            "syscall",
            "Verifier",
            "/sys/bus/",
            " not used: ",
        ] {
            assert!(!line.contains(detail), "{detail:?} in: {line}");
        }
    }
    let attached = start_up.last().expect("the start-up log");
    let unavailable: Vec<&str> = ["turns", "accept", "close"]
        .into_iter()
        .filter(|capability| attached.contains(&format!("{capability}: unavailable")))
        .collect();
    for capability in &unavailable {
        let warnings: Vec<&String> = start_up
            .iter()
            .filter(|line| line.contains(&format!("{capability} unavailable on this kernel: ")))
            .collect();
        assert_eq!(warnings.len(), 1, "{capability}: {start_up:#?}");
        assert!(warnings[0].contains("RUST_LOG=debug"), "{}", warnings[0]);
    }
    let warnings = start_up.iter().filter(|line| line.contains("WARN")).count();
    assert_eq!(warnings, unavailable.len(), "{start_up:#?}");

    let daemon = Daemon::start_with_log_level("json", "debug", &args);
    let refusals: Vec<&String> = daemon
        .log()
        .iter()
        .filter(|line| line.contains(" not used: "))
        .collect();
    for capability in &unavailable {
        assert!(
            refusals
                .iter()
                .any(|line| line.contains(&format!("{capability}: "))),
            "no refused {capability} hook at debug level: {:#?}",
            daemon.log()
        );
    }
    if unavailable.is_empty() {
        note_for_this_kernel(&format!(
            "every capability has a hook, so no warning at start-up ({} refused candidates at \
             debug level)",
            refusals.len()
        ));
    }
}

/// The long flags `help` names (`--interval`, ...).
fn long_flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.len() > 2 && word.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

/// What `command` prints on stdout, failing with its stderr unless it succeeds.
fn stdout_of(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The man pages tracker-docs writes render with `man` without a warning, and each names
/// every flag that `tracker --help` (or the subcommand's help) shows.
#[test]
fn the_man_pages_render_every_flag_of_the_help() {
    let dir = std::env::temp_dir().join(format!("tracker-docs-test-{}", std::process::id()));
    stdout_of(Command::new(env!("CARGO_BIN_EXE_tracker-docs")).arg(&dir));
    for completion in ["tracker.bash", "_tracker", "tracker.fish"] {
        let script = std::fs::read_to_string(dir.join("completions").join(completion)).unwrap();
        assert!(script.contains("--interval"), "{completion}: {script}");
    }
    for (page, subcommand) in [("tracker.1", None), ("tracker-top.1", Some("top"))] {
        let help = stdout_of(
            Command::new(env!("CARGO_BIN_EXE_tracker"))
                .args(subcommand)
                .arg("--help"),
        );
        let flags = long_flags(&help);
        assert!(flags.contains("--interval"), "{help}");
        let rendered = Command::new("man")
            .args(["--warnings", "-P", "cat", "-l"])
            .arg(dir.join("man").join(page))
            // Plain ASCII, lines long enough that no flag is broken across two.
            .env("LC_ALL", "C")
            .env("MANWIDTH", "200")
            .output()
            .expect("running man (cargo xtask test installs man-db)");
        let text = String::from_utf8_lossy(&rendered.stdout);
        let warnings = String::from_utf8_lossy(&rendered.stderr);
        assert!(
            rendered.status.success() && warnings.is_empty(),
            "{page}: {warnings}"
        );
        let documented = long_flags(&text);
        let missing: Vec<&String> = flags.difference(&documented).collect();
        assert!(missing.is_empty(), "{page} lacks {missing:?}:\n{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With `--duration` a whole number of intervals, the last interval's report is the final
/// one: exactly one report per interval, each a full interval long, and none merged (stdout
/// is a file, always ready). The end and the last tick fall on the same instant, so which is
/// seen first varies from run to run: ten runs.
#[test]
fn a_duration_of_whole_intervals_prints_one_report_per_interval() {
    const INTERVALS: usize = 3;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    for run in 0..10 {
        let path = std::env::temp_dir().join(format!(
            "tracker-duration-{}-{run}.json",
            std::process::id()
        ));
        let file = std::fs::File::create(&path).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_tracker"))
            .args(["--format", "json", "--interval", "0.2", "--duration", "0.6"])
            .args(["--port", &port])
            .stdout(file)
            .output()
            .expect("running tracker");
        let stdout = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "run {run}: {stderr}");
        assert!(!stderr.contains("not being read"), "run {run}: {stderr}");
        let reports: Vec<Value> = stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(reports.len(), INTERVALS, "run {run}: {stdout}");
        for report in &reports {
            let interval = report["interval_s"].as_f64().unwrap();
            assert!(interval >= 0.15, "run {run}: a short interval: {stdout}");
        }
    }
}
