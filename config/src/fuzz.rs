//! Entry point for the config fuzz target (`fuzz/`, outside the workspace) and for the seed
//! corpus that `cargo test` replays (`fuzz/corpus/config/`). Arbitrary bytes as a config file
//! must give a config or errors, never a panic (RELIABILITY promise 1).

/// `data` as a config file, then as a pushed snapshot; every error is rendered.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [
        crate::parse_str("fuzz.yaml", text),
        crate::parse_snapshot("fuzz", text),
    ] {
        if let Err(errors) = parsed {
            for error in &errors.errors {
                let _ = error.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_corpus_never_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config");
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/config") {
            let data = std::fs::read(entry.expect("a corpus entry").path()).expect("a seed");
            super::config(&data);
            seeds += 1;
        }
        assert!(seeds > 0, "{} has no seeds", dir.display());
    }
}
