//! `ficusctl inject -f FILE|-`: prints the manifests with the sidecar injected, exactly as
//! the admission webhook would inject them. Local only: the control plane is not contacted.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ficus_control::inject::manifest::{self, ManifestError};
use ficus_control::inject::InjectConfig;

use crate::{CtlError, Output};

/// Largest manifest read.
const MAX_INPUT: u64 = 16 * 1024 * 1024;

/// What `ficusctl inject` is told.
#[derive(Debug)]
pub struct InjectArgs {
    /// `-f`: a file or `-` for stdin.
    pub file: PathBuf,
    /// `-o`.
    pub output: Output,
    /// `--image`, when not the default.
    pub image: Option<String>,
    /// `--control-url`, when not the default.
    pub control_url: Option<String>,
    /// `--trust-domain` (global), when not the default: the sidecars' `--trust-domain`.
    pub trust_domain: Option<String>,
}

/// Reads, injects, prints (stdout: the manifests; stderr: warnings).
pub fn run(args: InjectArgs) -> Result<(), CtlError> {
    let (name, text) = read(&args.file)?;
    let mut config = InjectConfig::default();
    if let Some(image) = args.image {
        config.image = image;
    }
    if let Some(url) = args.control_url {
        config.control_url = url;
    }
    if let Some(trust_domain) = args.trust_domain {
        // A sidecar refuses to start on an invalid one: say so here rather than in the pod.
        ficus_identity::spiffe::validate_trust_domain(&trust_domain)
            .map_err(|e| CtlError::Usage(format!("--trust-domain {trust_domain:?}: {e}")))?;
        config.trust_domain = trust_domain;
    }
    let injected = manifest::inject_stream(&name, &text, &config).map_err(|e| match e {
        ManifestError::Yaml { .. } => CtlError::Usage(e.to_string()),
        _ => CtlError::failed(e.to_string()),
    })?;
    for warning in &injected.warnings {
        eprintln!("warning: {warning}");
    }
    let out = match args.output {
        Output::Yaml => manifest::to_yaml(&injected.documents)
            .map_err(|e| CtlError::failed(format!("cannot write YAML: {e}")))?,
        Output::Json => manifest::to_json(injected.documents),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CtlError::failed(format!("cannot write the output: {e}")))
}

fn read(path: &Path) -> Result<(String, String), CtlError> {
    let mut text = String::new();
    let (name, read) = if path == Path::new("-") {
        let read = std::io::stdin()
            .take(MAX_INPUT + 1)
            .read_to_string(&mut text);
        ("<stdin>".to_owned(), read)
    } else {
        let read = std::fs::File::open(path)
            .and_then(|file| file.take(MAX_INPUT + 1).read_to_string(&mut text));
        (path.display().to_string(), read)
    };
    read.map_err(|e| CtlError::failed(format!("cannot read {name}: {e}")))?;
    if text.len() as u64 > MAX_INPUT {
        return Err(CtlError::failed(format!(
            "{name} is larger than {} MiB",
            MAX_INPUT / (1024 * 1024)
        )));
    }
    Ok((name, text))
}
