//! `Backend` → [`model::Backend`].

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::{all, optional, Claims, Report};
use crate::model::{self, Endpoint, Protocol, ResourceKey, MAX_ENDPOINT_WEIGHT};
use crate::raw;

/// Validates a Backend. `claim` is false for a duplicate document, whose `listen` must not
/// be reported as taken by itself.
pub(crate) fn validate(
    report: &mut Report<'_>,
    document: &raw::BackendDocument,
    claims: &mut Claims,
    claim: bool,
) -> Option<model::Backend> {
    let key = ResourceKey::new(&document.metadata.namespace, &document.metadata.name);
    let spec = &document.spec;
    let protocol = match spec.protocol {
        raw::Protocol::Http => Protocol::Http,
        raw::Protocol::Http2 => Protocol::Http2,
        raw::Protocol::Grpc => Protocol::Grpc,
        raw::Protocol::Tcp => Protocol::Tcp,
    };
    // No endpoints is a Backend scaled to zero (or a Kubernetes Service whose pods are all
    // unready): it stays routable, and its share of requests gets 503 `UH`.
    let mut seen = BTreeSet::new();
    let endpoints: Vec<_> = spec
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, endpoint)| {
            let field = format!("spec.endpoints[{i}]");
            let endpoint = self::endpoint(report, &field, endpoint)?;
            if !seen.insert(endpoint.address) {
                report.error(
                    format!("{field}.address"),
                    format!("endpoint {} is listed twice", endpoint.address),
                    "list each address once; to send it more traffic, use weights on the route",
                );
                return None;
            }
            Some(endpoint)
        })
        .collect();
    let listen = listen(report, spec, protocol, &key, claims, claim);
    let service_account = spec.service_account.as_ref().map(|account| {
        let valid = super::is_service_account_name(account);
        if !valid {
            report.error(
                "spec.serviceAccount",
                format!("{account:?} is not a service account name"),
                "a Kubernetes service account name: lowercase letters, digits, '-' and '.', \
                 as in `kubectl get serviceaccounts`",
            );
        }
        valid.then(|| account.clone())
    });
    Some(model::Backend {
        key,
        protocol,
        endpoints: all(endpoints)?,
        listen: listen?,
        service_account: optional(service_account)?,
    })
}

fn endpoint(report: &mut Report<'_>, field: &str, endpoint: &raw::Endpoint) -> Option<Endpoint> {
    let address = socket_address(report, &format!("{field}.address"), &endpoint.address);
    let identity = endpoint
        .identity
        .as_ref()
        .map(|id| spiffe_id(report, &format!("{field}.identity"), id));
    let weight = self::weight(report, &format!("{field}.weight"), endpoint.weight);
    Some(Endpoint {
        address: address?,
        identity: optional(identity)?,
        weight: weight?,
    })
}

/// An endpoint's `weight`: 1 when left out, at most [`MAX_ENDPOINT_WEIGHT`].
fn weight(report: &mut Report<'_>, field: &str, weight: Option<u32>) -> Option<u32> {
    let weight = weight.unwrap_or(1);
    if weight > MAX_ENDPOINT_WEIGHT {
        report.error(
            field,
            format!("weight {weight} is above {MAX_ENDPOINT_WEIGHT}"),
            "weights are relative: 3 and 1 split like 3000 and 1000; 0 drains the endpoint",
        );
        return None;
    }
    Some(weight)
}

fn listen(
    report: &mut Report<'_>,
    spec: &raw::BackendSpec,
    protocol: Protocol,
    key: &ResourceKey,
    claims: &mut Claims,
    claim: bool,
) -> Option<Option<SocketAddr>> {
    match (&spec.listen, protocol) {
        (None, Protocol::Tcp) => {
            report.error(
                "spec.listen",
                "a tcp Backend needs `listen`",
                "set `listen: 127.0.0.1:<port>`: the local address apps connect to for this \
                 Backend",
            );
            None
        }
        (None, _) => Some(None),
        (Some(_), _) if protocol != Protocol::Tcp => {
            report.error(
                "spec.listen",
                format!("`listen` is only for tcp Backends, and this one speaks {protocol:?}"),
                "remove `listen` (HTTP is routed through the outbound port), or set \
                 `protocol: tcp`",
            );
            None
        }
        (Some(text), _) => {
            let address = socket_address(report, "spec.listen", text)?;
            if claim {
                if let Some(owner) = claims.listens.get(&address) {
                    report.error(
                        "spec.listen",
                        format!("{address} is already the listen address of Backend \"{owner}\""),
                        "give every tcp Backend its own listen port",
                    );
                    return None;
                }
                claims.listens.insert(address, key.clone());
            }
            Some(Some(address))
        }
    }
}

/// `ip:port` with a port other than 0; host names are not resolved.
fn socket_address(report: &mut Report<'_>, field: &str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(address) if address.port() != 0 => Some(address),
        Ok(_) => {
            report.error(
                field,
                format!("{text:?} has port 0"),
                "give the real port, e.g. 127.0.0.1:9001",
            );
            None
        }
        Err(_) => {
            report.error(
                field,
                format!("{text:?} is not an ip:port address"),
                "write an IP address and port, e.g. 127.0.0.1:9001 or [::1]:9001 (host names are \
                 not resolved)",
            );
            None
        }
    }
}

/// A SPIFFE ID: `spiffe://<trust domain>/<path>`, by the rules the TLS layer verifies peers
/// with ([`crate::spiffe::SpiffeId`]): an ID accepted here always parses there, so an endpoint
/// that names one never loses its mTLS, and a policy entry can match.
pub(crate) fn spiffe_id(report: &mut Report<'_>, field: &str, id: &str) -> Option<String> {
    let error = match crate::spiffe::SpiffeId::parse(id) {
        Ok(parsed) => return Some(parsed.as_str().to_owned()),
        Err(error) => error,
    };
    report.error(
        field,
        error.to_string(),
        "write spiffe://<trust domain>/<path>, lowercase trust domain, path segments of \
         letters, digits, `.`, `-` and `_`, e.g. spiffe://cluster.local/ns/shop/sa/monolith",
    );
    None
}
