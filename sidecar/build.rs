//! Link options for release builds of the `ficus-sidecar` binary on x86_64 Linux, where rustc
//! links with lld. Both only cut the idle RSS (benches/README.md, "Hot path and idle RSS");
//! debug builds, tests and other targets link as before. `FICUS_LINK_ORDER=0` turns both off.
//!
//! - Code order: `symbol-order.txt` (written by `scripts/gen-symbol-order`) lists the functions
//!   a running sidecar executes. This script turns it into a linker script that puts them
//!   first in `.text`, together: the kernel maps 64 KB around each faulting page of the binary,
//!   so code spread over all of `.text` made most of it resident. See `build/link_order.rs`.
//! - Packed relative relocations (DT_RELR, glibc 2.36, Debian 12): the ~17,000 relative
//!   relocations of the PIE in a few KB instead of 400 KB of `.rela.dyn` that the loader reads
//!   in full at every start.

#[path = "build/link_order.rs"]
mod link_order;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FICUS_LINK_ORDER");
    let release = env::var("PROFILE").is_ok_and(|profile| profile == "release");
    // lld is rustc's default linker on this target since Rust 1.90; a build that picks another
    // linker through RUSTFLAGS gets neither option.
    let lld = env::var("TARGET").is_ok_and(|target| target == "x86_64-unknown-linux-gnu")
        && !env::var("CARGO_ENCODED_RUSTFLAGS")
            .is_ok_and(|flags| flags.contains("linker") || flags.contains("fuse-ld"));
    let enabled = !env::var("FICUS_LINK_ORDER").is_ok_and(|value| value == "0");
    if !(release && lld && enabled) {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");

    let (Ok(manifest_dir), Ok(out_dir)) = (env::var("CARGO_MANIFEST_DIR"), env::var("OUT_DIR"))
    else {
        return;
    };
    let order = Path::new(&manifest_dir).join("symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    let Ok(names) = fs::read_to_string(&order) else {
        println!(
            "cargo:warning=no {}: code order left to the linker",
            order.display()
        );
        return;
    };
    let script = PathBuf::from(out_dir).join("symbol-order.ld");
    if let Err(error) = fs::write(&script, link_order::linker_script(&names)) {
        println!("cargo:warning=cannot write {}: {error}", script.display());
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
