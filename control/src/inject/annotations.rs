//! The `ficus.dev/*` annotations that steer injection, parsed and checked.

use std::net::IpAddr;

use serde_json::Value;

use super::InjectError;

/// `"false"` opts a pod out.
pub const INJECT: &str = "ficus.dev/inject";
/// Outbound ports not redirected to the sidecar.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "ficus.dev/exclude-outbound-ports";
/// Inbound ports not redirected to the sidecar.
pub const EXCLUDE_INBOUND_PORTS: &str = "ficus.dev/exclude-inbound-ports";
/// Outbound destinations (CIDRs) not redirected to the sidecar.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "ficus.dev/exclude-outbound-cidrs";
/// The sidecar's CPU request.
pub const PROXY_CPU: &str = "ficus.dev/proxy-cpu";
/// The sidecar's memory request.
pub const PROXY_MEMORY: &str = "ficus.dev/proxy-memory";

/// What a pod's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// False with `ficus.dev/inject: "false"`.
    pub inject: bool,
    /// `ficus.dev/exclude-outbound-ports`.
    pub exclude_outbound_ports: Vec<u16>,
    /// `ficus.dev/exclude-inbound-ports`.
    pub exclude_inbound_ports: Vec<u16>,
    /// `ficus.dev/exclude-outbound-cidrs`, normalized text (`10.0.0.0/8`).
    pub exclude_outbound_cidrs: Vec<String>,
    /// `ficus.dev/proxy-cpu` (a Kubernetes quantity).
    pub proxy_cpu: String,
    /// `ficus.dev/proxy-memory` (a Kubernetes quantity).
    pub proxy_memory: String,
}

impl Annotations {
    /// Reads `metadata.annotations` (absent means defaults).
    pub fn read(annotations: Option<&Value>) -> Result<Self, InjectError> {
        let get = |name: &str| -> Result<Option<&str>, InjectError> {
            match annotations.and_then(|a| a.get(name)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.trim())),
                Some(_) => Err(error(name, "annotation values are strings; quote it")),
            }
        };
        if let Some(other) = annotations.filter(|a| !a.is_object() && !a.is_null()) {
            return Err(InjectError::Shape {
                path: format!("metadata.annotations ({other})"),
                expected: "an object of strings",
            });
        }
        let inject = match get(INJECT)? {
            None => true,
            Some(value) if value.eq_ignore_ascii_case("true") => true,
            Some(value) if value.eq_ignore_ascii_case("false") => false,
            Some(value) => {
                return Err(error(
                    INJECT,
                    &format!("{value:?} is not \"true\" or \"false\""),
                ))
            }
        };
        Ok(Self {
            inject,
            exclude_outbound_ports: ports(EXCLUDE_OUTBOUND_PORTS, get(EXCLUDE_OUTBOUND_PORTS)?)?,
            exclude_inbound_ports: ports(EXCLUDE_INBOUND_PORTS, get(EXCLUDE_INBOUND_PORTS)?)?,
            exclude_outbound_cidrs: cidrs(get(EXCLUDE_OUTBOUND_CIDRS)?)?,
            proxy_cpu: quantity(PROXY_CPU, get(PROXY_CPU)?, "100m")?,
            proxy_memory: quantity(PROXY_MEMORY, get(PROXY_MEMORY)?, "64Mi")?,
        })
    }
}

fn error(name: &str, reason: &str) -> InjectError {
    InjectError::Annotation {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Splits a comma-separated list, ignoring spaces and empty items.
fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// `"5432, 6379"` → sorted, deduplicated ports 1..=65535.
fn ports(name: &str, text: Option<&str>) -> Result<Vec<u16>, InjectError> {
    let mut ports = Vec::new();
    for item in items(text.unwrap_or("")) {
        match item.parse::<u16>() {
            Ok(port) if port > 0 => ports.push(port),
            _ => {
                return Err(error(
                    name,
                    &format!("{item:?} is not a port (1-65535); write e.g. \"5432,6379\""),
                ))
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// `"10.0.0.0/8, fd00::/8"` → checked CIDRs (an address alone means a single host).
fn cidrs(text: Option<&str>) -> Result<Vec<String>, InjectError> {
    let mut cidrs = Vec::new();
    for item in items(text.unwrap_or("")) {
        let bad = || {
            error(
                EXCLUDE_OUTBOUND_CIDRS,
                &format!("{item:?} is not a CIDR; write e.g. \"10.0.0.0/8,fd00::/8\""),
            )
        };
        let (address, prefix) = item.split_once('/').unwrap_or((item, ""));
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?
        };
        let cidr = format!("{address}/{prefix}");
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(cidrs)
}

/// A Kubernetes resource quantity: a decimal number and an optional suffix.
fn quantity(name: &str, text: Option<&str>, default: &str) -> Result<String, InjectError> {
    let Some(text) = text else {
        return Ok(default.to_owned());
    };
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number != "."
        && number.parse::<f64>().is_ok_and(|n| n > 0.0);
    if number_ok && SUFFIXES.contains(&suffix) {
        Ok(text.to_owned())
    } else {
        Err(error(
            name,
            &format!("{text:?} is not a resource quantity; write e.g. \"250m\" or \"128Mi\""),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_without_annotations() {
        let read = Annotations::read(None).unwrap();
        assert!(read.inject);
        assert!(read.exclude_inbound_ports.is_empty());
        assert_eq!(read.proxy_cpu, "100m");
        assert_eq!(read.proxy_memory, "64Mi");
    }

    #[test]
    fn lists_are_parsed_sorted_and_deduplicated() {
        let read = Annotations::read(Some(&json!({
            EXCLUDE_OUTBOUND_PORTS: " 6379, 5432,,5432 ",
            EXCLUDE_INBOUND_PORTS: "9090",
            EXCLUDE_OUTBOUND_CIDRS: "10.0.0.0/8, fd00::/8, 169.254.169.254",
            PROXY_CPU: "250m",
            PROXY_MEMORY: "1.5Gi",
            INJECT: "TRUE",
        })))
        .unwrap();
        assert!(read.inject);
        assert_eq!(read.exclude_outbound_ports, [5432, 6379]);
        assert_eq!(read.exclude_inbound_ports, [9090]);
        assert_eq!(
            read.exclude_outbound_cidrs,
            ["10.0.0.0/8", "fd00::/8", "169.254.169.254/32"]
        );
        assert_eq!(read.proxy_cpu, "250m");
        assert_eq!(read.proxy_memory, "1.5Gi");
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let message = |annotations: Value| {
            Annotations::read(Some(&annotations))
                .unwrap_err()
                .to_string()
        };
        assert!(message(json!({INJECT: "no"})).starts_with("annotation ficus.dev/inject:"));
        assert!(message(json!({INJECT: false})).contains("quote it"));
        for bad in ["0", "65536", "http", "80-90"] {
            assert!(
                message(json!({EXCLUDE_OUTBOUND_PORTS: bad})).contains("is not a port"),
                "{bad}"
            );
        }
        for bad in ["10.0.0.0/33", "fd00::/129", "example.com", "10.0.0.0/x"] {
            assert!(
                message(json!({EXCLUDE_OUTBOUND_CIDRS: bad})).contains("is not a CIDR"),
                "{bad}"
            );
        }
        for bad in ["lots", "1.2.3m", "-1", "0", "12Mb", ""] {
            assert!(
                message(json!({PROXY_MEMORY: bad})).contains("resource quantity"),
                "{bad}"
            );
        }
        assert!(message(json!(["not", "a", "map"])).contains("an object of strings"));
    }

    #[test]
    fn opt_out() {
        let read = Annotations::read(Some(&json!({INJECT: "false"}))).unwrap();
        assert!(!read.inject);
    }
}
