//! The linker script `build.rs` makes from `symbol-order.txt` (release links of the binary).

#[path = "../build/link_order.rs"]
mod link_order;

use link_order::{hash_free, linker_script};

#[test]
fn legacy_names_lose_their_hash_and_llvm_suffix() {
    assert_eq!(
        hash_free("_ZN5tokio7runtime4task3raw4poll17h1430ff03d5f5f995E"),
        "_ZN5tokio7runtime4task3raw4poll17h*"
    );
    assert_eq!(
        hash_free("_ZN3std4hash6random11RandomState3new17h0123456789abcdefE.2979"),
        "_ZN3std4hash6random11RandomState3new17h*"
    );
    // Not a hash: kept as it is.
    assert_eq!(hash_free("_ZN4main17hXYZE"), "_ZN4main17hXYZE");
}

#[test]
fn v0_names_lose_their_crate_disambiguators() {
    assert_eq!(
        hash_free("_RNvNtCsgEmfK2I1SDS_4core3fmt5write"),
        "_RNvNtCs*_4core3fmt5write"
    );
    assert_eq!(
        hash_free("_RNvXs2_NtNtCsjrHSEGnQ3l9_3std4hash6randomNtB5_13DefaultHasher5write.1145"),
        "_RNvXs2_NtNtCs*_3std4hash6randomNtB5_13DefaultHasher5write.*"
    );
    // "Cs" not followed by a base-62 number and `_` stays.
    assert_eq!(hash_free("_RNvCs_3Csv"), "_RNvCs_3Csv");
}

#[test]
fn other_names_stay() {
    assert_eq!(hash_free("main"), "main");
    assert_eq!(hash_free("rust_eh_personality"), "rust_eh_personality");
}

#[test]
fn script_places_exact_names_then_patterns_then_the_rest() {
    let names = "# comment\n\
                 _ZN1a4poll17h1111111111111111E\n\
                 \n\
                 _ZN1b4poll17h2222222222222222E\n\
                 _ZN1a4poll17h3333333333333333E\n\
                 bad(name)\n\
                 main\n";
    let script = linker_script(names);
    let lines: Vec<&str> = script.lines().map(str::trim).collect();
    let inputs: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| line.starts_with("*("))
        .collect();
    assert_eq!(
        inputs,
        [
            "*(.text._ZN1a4poll17h1111111111111111E .text.hot._ZN1a4poll17h1111111111111111E .text.unlikely._ZN1a4poll17h1111111111111111E)",
            "*(.text._ZN1b4poll17h2222222222222222E .text.hot._ZN1b4poll17h2222222222222222E .text.unlikely._ZN1b4poll17h2222222222222222E)",
            "*(.text._ZN1a4poll17h3333333333333333E .text.hot._ZN1a4poll17h3333333333333333E .text.unlikely._ZN1a4poll17h3333333333333333E)",
            "*(.text.main .text.hot.main .text.unlikely.main)",
            // one pattern per hash-free name, none for names without a hash
            "*(.text._ZN1a4poll17h* .text.hot._ZN1a4poll17h* .text.unlikely._ZN1a4poll17h*)",
            "*(.text._ZN1b4poll17h* .text.hot._ZN1b4poll17h* .text.unlikely._ZN1b4poll17h*)",
            "*(.text .text.*)",
        ]
    );
    assert_eq!(&lines[..3], ["SECTIONS", "{", ".text :"]);
    assert_eq!(lines.last(), Some(&"INSERT BEFORE .init;"));
}

#[test]
fn empty_file_gives_the_default_text_section() {
    let script = linker_script("# nothing yet\n");
    assert_eq!(
        script,
        "SECTIONS\n{\n  .text :\n  {\n    *(.text .text.*)\n  }\n}\nINSERT BEFORE .init;\n"
    );
}
