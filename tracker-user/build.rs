use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Compiles `tracker-ebpf` for the BPF target (nightly, `-Z build-std=core`, bpf-linker) and
/// leaves the object in `OUT_DIR/tracker-probes`, which `src/bpf.rs` embeds. `cargo xtask` installs the
/// toolchain pieces this needs before it builds anything.
fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "tracker-ebpf")
        .ok_or_else(|| anyhow!("package tracker-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
