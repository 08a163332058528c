//! Reading `-f`: a file, a directory of `*.yaml` / `*.yml`, or stdin; bounded in size.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::CtlError;

/// Largest total size of the files of one apply (the server's body limit is 4 MiB).
const MAX_INPUT: usize = 4 * 1024 * 1024 - 64 * 1024;

/// A source as the API takes it.
#[derive(Debug, serde::Serialize)]
pub struct Source {
    name: String,
    text: String,
}

/// Reads `-f`: a file, every *.yaml / *.yml file of a directory (sorted, dotfiles skipped), or
/// stdin for `-`.
pub async fn read_sources(path: PathBuf) -> Result<Vec<Source>, CtlError> {
    tokio::task::spawn_blocking(move || read_sources_blocking(&path))
        .await
        .map_err(|e| CtlError::failed(format!("reading the files failed: {e}")))?
}

fn read_sources_blocking(path: &Path) -> Result<Vec<Source>, CtlError> {
    let cannot = |path: &Path, e: std::io::Error| {
        CtlError::failed(format!("cannot read {}: {e}", path.display()))
    };
    if path == Path::new("-") {
        return check_size(vec![Source {
            name: "<stdin>".to_owned(),
            text: read_stdin()?,
        }]);
    }
    let metadata = std::fs::metadata(path).map_err(|e| cannot(path, e))?;
    if !metadata.is_dir() {
        let text = read_file(path)?;
        return check_size(vec![Source {
            name: path.display().to_string(),
            text,
        }]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| cannot(path, e))? {
        let entry = entry.map_err(|e| cannot(path, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if (file_name.ends_with(".yaml") || file_name.ends_with(".yml"))
            && !file_name.starts_with('.')
        {
            files.push(entry.path());
        }
    }
    if files.is_empty() {
        return Err(CtlError::failed(format!(
            "{} has no *.yaml or *.yml files",
            path.display()
        )));
    }
    files.sort();
    let sources = files
        .iter()
        .map(|file| {
            Ok(Source {
                name: file.display().to_string(),
                text: read_file(file)?,
            })
        })
        .collect::<Result<Vec<_>, CtlError>>()?;
    check_size(sources)
}

/// Standard input, refused when larger than the limit (it is read to one byte past it).
pub fn read_stdin() -> Result<String, CtlError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_INPUT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CtlError::failed(format!("cannot read stdin: {e}")))?;
    if bytes.len() > MAX_INPUT {
        return Err(CtlError::failed(format!(
            "stdin is larger than {} KiB; give the files with -f FILE|DIR instead",
            MAX_INPUT / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|e| CtlError::failed(format!("cannot read stdin: {e}")))
}

fn read_file(path: &Path) -> Result<String, CtlError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CtlError::failed(format!("cannot read {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_INPUT as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            CtlError::failed(format!(
                "cannot read {}: {e} (is it UTF-8 text?)",
                path.display()
            ))
        })?;
    Ok(text)
}

fn check_size(sources: Vec<Source>) -> Result<Vec<Source>, CtlError> {
    let total: usize = sources.iter().map(|s| s.text.len() + s.name.len()).sum();
    if total > MAX_INPUT {
        return Err(CtlError::failed(format!(
            "the config is larger than {} KiB; split it into several applies",
            MAX_INPUT / 1024
        )));
    }
    Ok(sources)
}
