//! Link flags for the `flotilla` binary.

fn main() {
    // Packed relative relocations (DT_RELR; glibc 2.36, binutils 2.38): the position-independent
    // binary's ~1 MB `.rela.dyn` table shrinks to a few KB. The loader reads that table at every
    // start, so each `flotilla` process (the node proxy included) stays about 1 MB smaller, and
    // address-space randomisation is kept.
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
