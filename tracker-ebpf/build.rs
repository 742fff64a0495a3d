use which::which;

/// The BPF build links with `bpf-linker`, a binary cargo does not know about: rebuild when the
/// installed linker changes (xtask installs or upgrades it).
fn main() {
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(error) => println!("cargo:warning=bpf-linker not found on PATH: {error}"),
    }
}
