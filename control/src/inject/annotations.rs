//! The `ficus.dev/*` annotations that steer injection, parsed and checked.

use std::net::IpAddr;

use serde_json::Value;

use super::quantity::Quantity;
use super::InjectError;

/// `"false"` opts a pod out.
pub const INJECT: &str = "ficus.dev/inject";
/// `"false"` leaves the app's probes alone: their ports are excluded from inbound redirection.
pub const REWRITE_APP_PROBES: &str = "ficus.dev/rewrite-app-probes";
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
/// The sidecar's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "ficus.dev/proxy-cpu-limit";
/// The sidecar's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "ficus.dev/proxy-memory-limit";

/// The sidecar's CPU request without `ficus.dev/proxy-cpu`.
pub const DEFAULT_PROXY_CPU: &str = "100m";
/// The sidecar's memory request without `ficus.dev/proxy-memory`.
pub const DEFAULT_PROXY_MEMORY: &str = "64Mi";

/// What a pod's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// False with `ficus.dev/inject: "false"`.
    pub inject: bool,
    /// False with `ficus.dev/rewrite-app-probes: "false"`: probes go to the app's ports,
    /// which are then excluded from inbound redirection (see [`super::probes`]).
    pub rewrite_app_probes: bool,
    /// `ficus.dev/exclude-outbound-ports`.
    pub exclude_outbound_ports: Vec<u16>,
    /// `ficus.dev/exclude-inbound-ports`.
    pub exclude_inbound_ports: Vec<u16>,
    /// `ficus.dev/exclude-outbound-cidrs`, normalized text (`10.0.0.0/8`).
    pub exclude_outbound_cidrs: Vec<String>,
    /// `ficus.dev/proxy-cpu`: the sidecar's CPU request.
    pub proxy_cpu: Quantity,
    /// `ficus.dev/proxy-memory`: the sidecar's memory request.
    pub proxy_memory: Quantity,
    /// `ficus.dev/proxy-cpu-limit`, at least `proxy_cpu`; without it the limit follows the
    /// pod (see [`super::containers::sidecar_resources`]).
    pub proxy_cpu_limit: Option<Quantity>,
    /// `ficus.dev/proxy-memory-limit`, at least `proxy_memory`; without it as the CPU's.
    pub proxy_memory_limit: Option<Quantity>,
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
        let inject = boolean(INJECT, get(INJECT)?)?;
        let rewrite_app_probes = boolean(REWRITE_APP_PROBES, get(REWRITE_APP_PROBES)?)?;
        let proxy_cpu = quantity(PROXY_CPU, get(PROXY_CPU)?.unwrap_or(DEFAULT_PROXY_CPU))?;
        let proxy_memory = quantity(
            PROXY_MEMORY,
            get(PROXY_MEMORY)?.unwrap_or(DEFAULT_PROXY_MEMORY),
        )?;
        Ok(Self {
            inject,
            rewrite_app_probes,
            exclude_outbound_ports: ports(EXCLUDE_OUTBOUND_PORTS, get(EXCLUDE_OUTBOUND_PORTS)?)?,
            exclude_inbound_ports: ports(EXCLUDE_INBOUND_PORTS, get(EXCLUDE_INBOUND_PORTS)?)?,
            exclude_outbound_cidrs: cidrs(get(EXCLUDE_OUTBOUND_CIDRS)?)?,
            proxy_cpu_limit: limit(
                PROXY_CPU_LIMIT,
                get(PROXY_CPU_LIMIT)?,
                &proxy_cpu,
                PROXY_CPU,
            )?,
            proxy_memory_limit: limit(
                PROXY_MEMORY_LIMIT,
                get(PROXY_MEMORY_LIMIT)?,
                &proxy_memory,
                PROXY_MEMORY,
            )?,
            proxy_cpu,
            proxy_memory,
        })
    }
}

fn error(name: &str, reason: &str) -> InjectError {
    InjectError::Annotation {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// `"true"` (the default) or `"false"`, in any case.
fn boolean(name: &str, text: Option<&str>) -> Result<bool, InjectError> {
    match text {
        None => Ok(true),
        Some(value) if value.eq_ignore_ascii_case("true") => Ok(true),
        Some(value) if value.eq_ignore_ascii_case("false") => Ok(false),
        Some(value) => Err(error(
            name,
            &format!("{value:?} is not \"true\" or \"false\""),
        )),
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

/// A Kubernetes resource quantity: a positive decimal number and an optional suffix.
fn quantity(name: &str, text: &str) -> Result<Quantity, InjectError> {
    Quantity::parse(text).ok_or_else(|| {
        error(
            name,
            &format!("{text:?} is not a resource quantity; write e.g. \"250m\" or \"128Mi\""),
        )
    })
}

/// A limit annotation: a quantity no lower than `request` (what `request_name` asks, or its
/// default), since Kubernetes refuses a container whose request exceeds its limit.
fn limit(
    name: &str,
    text: Option<&str>,
    request: &Quantity,
    request_name: &str,
) -> Result<Option<Quantity>, InjectError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let limit = quantity(name, text)?;
    if limit < *request {
        return Err(error(
            name,
            &format!(
                "{text:?} is below the sidecar's request {request:?} ({request_name}); a limit \
                 must be at least the request: raise it, or lower {request_name}",
                request = request.as_str()
            ),
        ));
    }
    Ok(Some(limit))
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
        assert_eq!(read.proxy_cpu.as_str(), "100m");
        assert_eq!(read.proxy_memory.as_str(), "64Mi");
        assert_eq!(
            (read.proxy_cpu_limit, read.proxy_memory_limit),
            (None, None)
        );
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
        assert_eq!(read.proxy_cpu.as_str(), "250m");
        assert_eq!(read.proxy_memory.as_str(), "1.5Gi");
    }

    #[test]
    fn limits_are_read_and_may_equal_the_request() {
        let read = Annotations::read(Some(&json!({
            PROXY_CPU: "500m",
            PROXY_CPU_LIMIT: "0.5",
            PROXY_MEMORY_LIMIT: "2Gi",
        })))
        .unwrap();
        assert_eq!(
            read.proxy_cpu_limit.as_ref().map(Quantity::as_str),
            Some("0.5")
        );
        assert_eq!(
            read.proxy_memory_limit.as_ref().map(Quantity::as_str),
            Some("2Gi")
        );
    }

    #[test]
    fn a_limit_below_the_request_names_both_annotations() {
        let message = |annotations: Value| {
            Annotations::read(Some(&annotations))
                .unwrap_err()
                .to_string()
        };
        let below = message(json!({PROXY_MEMORY: "1Gi", PROXY_MEMORY_LIMIT: "1000Mi"}));
        assert!(
            below.starts_with("annotation ficus.dev/proxy-memory-limit: \"1000Mi\" is below"),
            "{below}"
        );
        assert!(
            below.contains("\"1Gi\" (ficus.dev/proxy-memory)"),
            "{below}"
        );
        // Below the default request (100m) too.
        let below = message(json!({PROXY_CPU_LIMIT: "50m"}));
        assert!(
            below.starts_with("annotation ficus.dev/proxy-cpu-limit: \"50m\" is below"),
            "{below}"
        );
        assert!(below.contains("\"100m\""), "{below}");
        for bad in ["2 cores", "-1", "1e3", "0"] {
            assert!(
                message(json!({PROXY_CPU_LIMIT: bad}))
                    .starts_with("annotation ficus.dev/proxy-cpu-limit: "),
                "{bad}"
            );
            assert!(
                message(json!({PROXY_MEMORY_LIMIT: bad})).contains("is not a resource quantity"),
                "{bad}"
            );
        }
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
        assert!(read.rewrite_app_probes);
        let read = Annotations::read(Some(&json!({REWRITE_APP_PROBES: "False"}))).unwrap();
        assert!(read.inject);
        assert!(!read.rewrite_app_probes);
        let bad = Annotations::read(Some(&json!({REWRITE_APP_PROBES: "no"}))).unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("annotation ficus.dev/rewrite-app-probes: \"no\""),
            "{bad}"
        );
    }
}
