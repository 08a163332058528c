//! Wire types of the push protocol (`proto/ficus.proto`), generated at build time, and the
//! document encoding both ends agree on.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

use sha2::{Digest, Sha256};

tonic::include_proto!("ficus.v1");

/// Encodes documents as the YAML stream a `Snapshot` carries: each document as JSON (which is
/// YAML), separated by `---` lines, in the given order.
pub fn encode_documents(documents: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for document in documents {
        out.push_str("---\n");
        out.push_str(&document.to_string());
        out.push('\n');
    }
    out
}

/// Hex SHA-256 of an encoded document stream.
pub fn digest(encoded: &str) -> String {
    let hash = Sha256::digest(encoded.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
