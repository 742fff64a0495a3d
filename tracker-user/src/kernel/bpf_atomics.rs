//! Whether the kernel's BPF takes compare-and-swap (`BPF_ATOMIC | BPF_CMPXCHG`, Linux 5.12+),
//! which the live gauges (`tracker_common::gauge`) use in the lifecycle and accept programs.
//! Older kernels reject any program holding the instruction, reachable or not, with a
//! verifier message that names no feature; probing with a program of seven instructions first
//! turns that into one clear line.

use std::io;
use std::mem;

use aya_obj::generated::{bpf_cmd, bpf_prog_type};

/// `struct bpf_insn`: opcode, destination and source registers (4 bits each), offset,
/// immediate.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The leading members of `union bpf_attr` that `BPF_PROG_LOAD` reads; the kernel takes a
/// shorter attribute as zero-extended.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
}

const R0: u8 = 0;
const R1: u8 = 1;
const R10: u8 = 10;
/// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm`.
const MOV64_IMM: u8 = 0x07 | 0xb0;
/// `BPF_STX | BPF_DW | BPF_MEM`: `*(u64 *)(dst + off) = src`.
const STX_DW: u8 = 0x03 | 0x18 | 0x60;
/// `BPF_STX | BPF_DW | BPF_ATOMIC`, with the operation in `imm`.
const ATOMIC_DW: u8 = 0x03 | 0x18 | 0xc0;
/// `BPF_CMPXCHG` (`0xf0 | BPF_FETCH`).
const CMPXCHG: i32 = 0xf1;
/// `BPF_JMP | BPF_EXIT`.
const EXIT: u8 = 0x05 | 0x90;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// Whether a socket filter doing one compare-and-swap on its stack loads: `Ok(false)` when the
/// kernel refuses the instruction (`EINVAL`), an error when the probe itself could not run
/// (no permission, say), for the caller to leave to the real load.
pub fn compare_and_swap_supported() -> io::Result<bool> {
    loads(&atomic_on_stack(CMPXCHG))
}

/// A socket filter doing the atomic operation `op` on a stack slot.
fn atomic_on_stack(op: i32) -> [Insn; 7] {
    [
        insn(MOV64_IMM, R1, 0, 0, 0),
        insn(STX_DW, R10, R1, -8, 0),
        insn(MOV64_IMM, R0, 0, 0, 0),
        insn(MOV64_IMM, R1, 0, 0, 1),
        // For CMPXCHG: if *(u64 *)(r10 - 8) == r0 then *(u64 *)(r10 - 8) = r1; r0 = the old
        // value.
        insn(ATOMIC_DW, R10, R1, -8, op),
        insn(MOV64_IMM, R0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Whether `program` loads as a socket filter (see [`compare_and_swap_supported`]).
fn loads(program: &[Insn]) -> io::Result<bool> {
    let license = c"GPL";
    let mut attr = ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER as u32,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
    };
    // SAFETY: the attribute, the instructions and the licence it points to live across the
    // call, and the size given is the attribute's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EINVAL) => Ok(false),
            _ => Err(error),
        };
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else holds it.
    unsafe { libc::close(fd as i32) };
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_operation_no_kernel_has_is_refused_not_an_error() {
        // 0xf3 is no BPF atomic operation: the probe must read the refusal as "unsupported".
        // Needs root (or CAP_BPF), like the daemon.
        assert!(!loads(&atomic_on_stack(0xf3)).expect("running the probe"));
        assert!(compare_and_swap_supported().expect("running the probe"));
    }
}
