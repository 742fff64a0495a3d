//! Checks on the built eBPF object itself, for costs no behaviour test would notice.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

/// The eBPF object the daemon loads.
fn probes() -> object::File<'static> {
    static BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tracker-probes"));
    object::File::parse(BYTES).expect("the eBPF object is ELF")
}

/// How many calls to `callee` the functions whose (mangled) names contain `name` make. A
/// program's section holds only its entry: rustc puts the body, with everything inlined into
/// it, in a function of its own in `.text`.
fn calls_in(file: &object::File<'_>, name: &str, callee: &str) -> usize {
    let callee = file
        .symbols()
        .find(|symbol| symbol.name() == Ok(callee))
        .unwrap_or_else(|| panic!("no {callee} in the eBPF object"))
        .index();
    let bodies: Vec<_> = file
        .symbols()
        .filter(|symbol| {
            symbol.kind() == object::SymbolKind::Text
                && symbol.name().is_ok_and(|symbol| symbol.contains(name))
        })
        .collect();
    assert!(
        !bodies.is_empty(),
        "no function named like {name} in the eBPF object"
    );
    bodies
        .iter()
        .map(|body| {
            let (start, end) = (body.address(), body.address() + body.size());
            let section = body
                .section_index()
                .and_then(|index| file.section_by_index(index).ok())
                .expect("a function's section");
            section
                .relocations()
                .filter(|(offset, relocation)| {
                    (start..end).contains(offset)
                        && relocation.target() == RelocationTarget::Symbol(callee)
                })
                .count()
        })
        .sum()
}

/// aya-ebpf's `memset` stores one byte per loop turn, five instructions a byte, and LLVM
/// calls it wherever it merges stores of zeroes (a cleared struct, key or address). The
/// lifecycle program runs at every TCP state change on the host, ten times per short-lived
/// connection, and once cleared 136 bytes of each new entry that way; `tracker_ebpf`'s
/// `zeroed::zero_words` keeps such stores apart. The four calls left are on the paths of
/// listeners appearing and of `--connect` destinations, which run once per listener or never;
/// a new one fails here.
#[test]
fn the_lifecycle_program_calls_no_new_byte_by_byte_memset() {
    const LEFT: usize = 4;
    let calls = calls_in(&probes(), "raw_inet_sock_set_state", "memset");
    assert!(
        calls <= LEFT,
        "the raw inet_sock_set_state program calls memset from {calls} places, {LEFT} known"
    );
}
