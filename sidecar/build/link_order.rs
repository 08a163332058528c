//! The linker script that puts the functions of `symbol-order.txt` first in `.text` (used by
//! `build.rs`; tested by `tests/link_order.rs`). Each function is placed by its exact symbol
//! name, then by the name without its hash: the hashes change with the features the
//! dependencies are built with (a `--workspace` build has others than `-p ficus-sidecar`) and
//! with signature changes, and a stale name still finds its function (with the other
//! instances of the same generic). Names the binary lacks match nothing and cost nothing.

use std::collections::HashSet;
use std::fmt::Write as _;

/// The linker script for the names of `symbol-order.txt` (one a line, `#` comments): the
/// function's section under each name LLVM gives it (`.text.hot.` and `.text.unlikely.` are
/// what a profile-guided build, `scripts/build-pgo`, puts hot and cold functions in); the
/// `.text` output section with every name exactly first, in the file's order, then every
/// name's hash-free pattern, then all other code as lld places it by default. It stays one
/// section named `.text` (valgrind only reads symbols there), inserted where lld puts `.text`
/// anyway. A name with characters a linker script pattern cannot hold is skipped.
pub fn linker_script(names: &str) -> String {
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
        let _ = writeln!(
            script,
            "    *(.text.{name} .text.hot.{name} .text.unlikely.{name})"
        );
    }
    let mut seen = HashSet::new();
    for name in &names {
        let pattern = hash_free(name);
        if pattern != *name && seen.insert(pattern.clone()) {
            let _ = writeln!(
                script,
                "    *(.text.{pattern} .text.hot.{pattern} .text.unlikely.{pattern})"
            );
        }
    }
    script.push_str("    *(.text .text.*)\n  }\n}\nINSERT BEFORE .init;\n");
    script
}

/// A glob for `name` with the parts that change between builds as `*`: LLVM's `.123` suffix
/// on a renamed local symbol, the `17h<16 hex digits>E` hash that ends a legacy Rust symbol,
/// and the crate disambiguators (`Cs<base 62>_`) of a v0 one.
pub fn hash_free(name: &str) -> String {
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
