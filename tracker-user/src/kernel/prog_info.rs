//! A per-program counter the kernel keeps that aya does not expose: `recursion_misses`
//! (`bpf_prog_info`, 5.12+), the runs the kernel skipped because the program was already
//! running on that CPU. The kernel never nests a program in itself: a softirq that fires
//! `inet_sock_set_state` (the last ACK of a connection, say) while the program runs in a task
//! (the server's own close of another connection) on the same CPU is dropped. A skipped run is
//! an event lost before it could reach the ring, which no ring counter sees.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// The `info` member of `union bpf_attr`, the only one `BPF_OBJ_GET_INFO_BY_FD` reads; the
/// kernel takes a shorter attribute as zero-extended.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Runs of `program` the kernel skipped since load; 0 on kernels that do not count them.
pub fn recursion_misses(program: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: plain integers and addresses; all zero is a valid value.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(program.as_raw_fd()).map_err(io::Error::other)?,
        info_len: u32::try_from(mem::size_of::<bpf_prog_info>()).map_err(io::Error::other)?,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: the attribute and the info buffer it points to live across the call, and the
    // sizes given are theirs; the kernel writes at most `info_len` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            mem::size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
