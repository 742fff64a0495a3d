//! What the daemon sets before it attaches: the configuration, the ports and destinations to
//! watch, and which system calls carry a payload buffer.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use tracker_common::{
    CONNECT_TARGETS_MAX_ENTRIES, Config, ConnKey, PORTS_MAX_ENTRIES, SYSCALL_BUFFERS_MAX_ENTRIES,
};

/// Which system calls carry a payload buffer, by number (see `SYSCALL_BUFFERS_MAP`).
#[map]
pub static SYSCALL_BUFFERS: Array<u32> = Array::with_max_entries(SYSCALL_BUFFERS_MAX_ENTRIES, 0);

/// Destinations of tracked outbound connections (see `CONNECT_TARGETS_MAP`). Value unused.
#[map]
pub static CONNECT_TARGETS: HashMap<ConnKey, u8> =
    HashMap::with_max_entries(CONNECT_TARGETS_MAX_ENTRIES, 0);

/// Local ports to watch, when `Config::filter_ports` is set: non-zero at a watched port's
/// index (see `PORTS_MAP`).
#[map]
pub static PORTS: Array<u8> = Array::with_max_entries(PORTS_MAX_ENTRIES, 0);

/// Run-time configuration, written by the daemon before attaching.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Whether events for `local_port` should be emitted under the current configuration.
#[inline(always)]
pub fn port_wanted(local_port: u16) -> bool {
    let filtering = CONFIG.get(0).is_some_and(|config| config.filter_ports != 0);
    !filtering
        || PORTS
            .get(u32::from(local_port))
            .is_some_and(|&watched| watched != 0)
}
