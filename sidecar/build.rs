//! Link options for release builds of the `ficus-sidecar` binary on x86_64 Linux, where rustc
//! links with lld. Both only cut the idle RSS (benches/README.md, "Hot path and idle RSS");
//! debug builds, tests and other targets link as before. `FICUS_LINK_ORDER=0` turns both off.
//!
//! - Code order: `symbol-order.txt` (written by `scripts/gen-symbol-order`) lists the functions
//!   a running sidecar executes. This script turns it into a linker script that puts them
//!   first in `.text`, together: the kernel maps 64 KB around each faulting page of the binary,
//!   so code spread over all of `.text` made most of it resident. Each function is placed by its exact symbol name, then by the name without
//!   its hash: the hashes change with the features the dependencies are built with (a
//!   `--workspace` build has others than `-p ficus-sidecar`) and with signature changes, and
//!   a stale name still finds its function (with the other instances of the same generic).
//!   Names the binary lacks match nothing and cost nothing.
//! - Packed relative relocations (DT_RELR, glibc 2.36, Debian 12): the ~17,000 relative
//!   relocations of the PIE in a few KB instead of 400 KB of `.rela.dyn` that the loader reads
//!   in full at every start.

use std::env;
use std::fmt::Write as _;
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
    if let Err(error) = fs::write(&script, linker_script(&names)) {
        println!("cargo:warning=cannot write {}: {error}", script.display());
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}

/// The linker script for the names of `symbol-order.txt` (one a line, `#` comments): the
/// `.text` output section with every name exactly first, in the file's order, then every
/// name's hash-free pattern, then all other code as lld places it by default. It stays one
/// section named `.text` (valgrind only reads symbols there), inserted where lld puts `.text`
/// anyway. A name with characters a linker script pattern cannot hold is skipped.
fn linker_script(names: &str) -> String {
    let names: Vec<&str> = names
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .filter(|name| {
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'))
        })
        .collect();
    let mut script = String::from("SECTIONS\n{\n  .text :\n  {\n");
    for name in &names {
        let _ = writeln!(script, "    *(.text.{name} .text.unlikely.{name})");
    }
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        let pattern = hash_free(name);
        if pattern != *name && seen.insert(pattern.clone()) {
            let _ = writeln!(script, "    *(.text.{pattern} .text.unlikely.{pattern})");
        }
    }
    script.push_str("    *(.text .text.*)\n  }\n}\nINSERT BEFORE .init;\n");
    script
}

/// A glob for `name` with the parts that change between builds as `*`: LLVM's `.123` suffix
/// on a renamed local symbol, the `17h<16 hex digits>E` hash that ends a legacy Rust symbol,
/// and the crate disambiguators (`Cs<base 62>_`) of a v0 one.
fn hash_free(name: &str) -> String {
    let mut name = name;
    let mut suffix = "";
    if let Some((stem, digits)) = name.rsplit_once('.') {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            name = stem;
            suffix = ".*";
        }
    }
    if name.starts_with("_ZN") && name.len() > 20 {
        let (stem, hash) = name.split_at(name.len() - 20);
        if hash.starts_with("17h")
            && hash.ends_with('E')
            && hash[3..19].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return format!("{stem}17h*");
        }
    }
    if !name.starts_with("_R") {
        return format!("{name}{suffix}");
    }
    let mut pattern = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("Cs") {
        let (before, after) = rest.split_at(at);
        pattern.push_str(before);
        let digits = after[2..]
            .bytes()
            .take_while(u8::is_ascii_alphanumeric)
            .count();
        if digits > 0 && after.as_bytes().get(2 + digits) == Some(&b'_') {
            pattern.push_str("Cs*_");
            rest = &after[3 + digits..];
        } else {
            pattern.push_str("Cs");
            rest = &after[2..];
        }
    }
    pattern.push_str(rest);
    pattern.push_str(suffix);
    pattern
}
