//! Reading a tracepoint's record.

use aya_ebpf::{EbpfContext as _, programs::TracePointContext};

/// Reads the field at `offset` of the tracepoint record straight from the program's context.
/// Tracepoint programs may load from their context within the record, which saves the
/// `bpf_probe_read_kernel` helper call `TracePointContext::read_at` makes for every field
/// (measurable on the connection path, which runs several times per connection host-wide).
///
/// # Safety
///
/// `offset` and `size_of::<T>()` must be those of a field of this tracepoint's format (the
/// daemon checks them against the format file before attaching), aligned for `T`.
#[inline(always)]
pub unsafe fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> Result<T, i64> {
    // SAFETY: per the function's contract the field lies within the record and is aligned.
    Ok(unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) })
}
