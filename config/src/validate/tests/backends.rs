//! Backends, Mesh, metadata and duplicates.

use super::*;

fn backend(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
         metadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
    )
}

fn mesh(spec: &str) -> String {
    format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {spec}\n"
    )
}

#[test]
fn a_backend_may_have_no_endpoints() {
    // A workload scaled to zero: routes to it stay valid (its share gets 503 `UH`).
    let text = with_backends(&backend("x", "{endpoints: []}"));
    let config = parse(&text).unwrap();
    assert!(
        config.backends[&crate::model::ResourceKey::new("shop", "x")]
            .endpoints
            .is_empty()
    );
    let tcp = backend(
        "y",
        "{protocol: tcp, listen: 127.0.0.1:16380, endpoints: []}",
    );
    let config = parse(&with_backends(&tcp)).unwrap();
    assert!(
        config.backends[&crate::model::ResourceKey::new("shop", "y")]
            .endpoints
            .is_empty()
    );
}

#[test]
fn endpoint_address_must_be_a_socket_address() {
    let text = with_backends(&backend(
        "x",
        "{endpoints: [{address: 127.0.0.1:1}, {address: \"localhost:80\"}]}",
    ));
    single_error(
        &text,
        "Backend shop/x",
        "spec.endpoints[1].address",
        "not an ip:port",
    );
    let text = with_backends(&backend("x", "{endpoints: [{address: \"[::1]:0\"}]}"));
    single_error(
        &text,
        "Backend shop/x",
        "spec.endpoints[0].address",
        "port 0",
    );
}

#[test]
fn endpoints_are_listed_once() {
    let text = with_backends(&backend(
        "x",
        "{endpoints: [{address: 127.0.0.1:1}, {address: 127.0.0.1:1}]}",
    ));
    single_error(
        &text,
        "Backend shop/x",
        "spec.endpoints[1].address",
        "listed twice",
    );
}

#[test]
fn identity_must_be_a_spiffe_id() {
    let text = with_backends(&backend(
        "x",
        "{endpoints: [{address: 127.0.0.1:1, identity: shop/monolith}]}",
    ));
    single_error(
        &text,
        "Backend shop/x",
        "spec.endpoints[0].identity",
        "invalid SPIFFE ID",
    );
    // What the TLS layer would refuse to verify is refused here too: an endpoint that named
    // it used to lose its mTLS at run time.
    for id in [
        "spiffe://Cluster.Local/ns/shop/sa/x",
        "spiffe://cluster.local/ns/shop/sa/a%41",
        "spiffe://cluster.local/ns//sa/x",
        "spiffe://cluster.local:8443/ns/shop/sa/x",
    ] {
        let text = with_backends(&backend(
            "x",
            &format!("{{endpoints: [{{address: 127.0.0.1:1, identity: \"{id}\"}}]}}"),
        ));
        single_error(
            &text,
            "Backend shop/x",
            "spec.endpoints[0].identity",
            "invalid SPIFFE ID",
        );
    }
    let ok = with_backends(&backend(
        "x",
        "{endpoints: [{address: 127.0.0.1:1, identity: \"spiffe://cluster.local/ns/shop/sa/x\"}]}",
    ));
    let config = valid(&ok);
    let endpoint = &config.backends[&crate::model::ResourceKey::new("shop", "x")].endpoints[0];
    assert_eq!(
        endpoint.identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/x")
    );
}

#[test]
fn a_service_account_is_a_kubernetes_name() {
    let ok = with_backends(&backend(
        "x",
        "{endpoints: [], serviceAccount: payments-sa}",
    ));
    let config = valid(&ok);
    let backend_x = &config.backends[&crate::model::ResourceKey::new("shop", "x")];
    assert_eq!(backend_x.service_account.as_deref(), Some("payments-sa"));
    for bad in ["\"\"", "Payments", "a/b", "\"-x\""] {
        let text = with_backends(&backend(
            "x",
            &format!("{{endpoints: [], serviceAccount: {bad}}}"),
        ));
        single_error(
            &text,
            "Backend shop/x",
            "spec.serviceAccount",
            "not a service account name",
        );
    }
}

#[test]
fn endpoint_weights_default_to_1_and_are_bounded() {
    let ok = with_backends(&backend(
        "x",
        "{endpoints: [{address: 127.0.0.1:1, weight: 3}, {address: 127.0.0.1:2}, \
         {address: 127.0.0.1:3, weight: 0}, {address: 127.0.0.1:4, weight: 1000000}]}",
    ));
    let config = valid(&ok);
    let endpoints = &config.backends[&crate::model::ResourceKey::new("shop", "x")].endpoints;
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
    assert_eq!(weights, [3, 1, 0, 1_000_000]);
    // Every weight 0 is accepted: the balancer then ignores the weights.
    valid(&with_backends(&backend(
        "x",
        "{endpoints: [{address: 127.0.0.1:1, weight: 0}]}",
    )));
    let field = "spec.endpoints[1].weight";
    for (weight, message) in [
        ("1000001", "above 1000000"),
        ("-1", "invalid value"),
        ("1.5", "invalid type"),
        ("heavy", "invalid type"),
        ("4294967296", "invalid value"),
    ] {
        let text = with_backends(&backend(
            "x",
            &format!("{{endpoints: [{{address: 127.0.0.1:1}}, {{address: 127.0.0.1:2, weight: {weight}}}]}}"),
        ));
        single_error(&text, "Backend shop/x", field, message);
    }
}

#[test]
fn tcp_backend_needs_listen() {
    let text = with_backends(&backend(
        "x",
        "{protocol: tcp, endpoints: [{address: 127.0.0.1:1}]}",
    ));
    single_error(&text, "Backend shop/x", "spec.listen", "needs `listen`");
}

#[test]
fn listen_only_on_tcp_backends() {
    let text = with_backends(&backend(
        "x",
        "{listen: 127.0.0.1:2, endpoints: [{address: 127.0.0.1:1}]}",
    ));
    single_error(
        &text,
        "Backend shop/x",
        "spec.listen",
        "only for tcp Backends",
    );
}

#[test]
fn listen_addresses_are_unique() {
    let text = with_backends(&backend(
        "x",
        "{protocol: tcp, listen: 127.0.0.1:16379, endpoints: [{address: 127.0.0.1:1}]}",
    ));
    let error = single_error(
        &text,
        "Backend shop/x",
        "spec.listen",
        "already the listen address",
    );
    assert!(error.message.contains("shop/cache"), "{error}");
}

#[test]
fn unknown_protocol_names_the_choices() {
    let text = with_backends(&backend(
        "x",
        "{protocol: udp, endpoints: [{address: 127.0.0.1:1}]}",
    ));
    let error = single_error(
        &text,
        "Backend shop/x",
        "spec.protocol",
        "unknown variant `udp`",
    );
    assert!(error.hint.unwrap().contains("http, http2, grpc, tcp"));
}

#[test]
fn duplicate_names_are_reported_on_the_second() {
    let text = with_backends(&backend(
        "monolith",
        "{endpoints: [{address: 127.0.0.1:1}]}",
    ));
    let error = single_error(
        &text,
        "Backend shop/monolith",
        "metadata.name",
        "duplicate Backend \"shop/monolith\"",
    );
    assert_eq!(error.line, Some(APPENDED_LINE));
    assert!(error.hint.unwrap().contains("test.yaml:1"));
    // The same name in another namespace, or of another kind, is fine.
    valid(&with_backends(
        &backend("monolith", "{endpoints: [{address: 127.0.0.1:1}]}").replace("shop}", "web}"),
    ));
}

#[test]
fn names_must_be_dns_labels() {
    let text = with_backends(&backend(
        "Payments.V3",
        "{endpoints: [{address: 127.0.0.1:1}]}",
    ));
    single_error(
        &text,
        "Backend shop/Payments.V3",
        "metadata.name",
        "not a DNS label",
    );
    let text = with_backends(
        &backend("x", "{endpoints: [{address: 127.0.0.1:1}]}")
            .replace("namespace: shop", "namespace: Shop"),
    );
    single_error(
        &text,
        "Backend Shop/x",
        "metadata.namespace",
        "not a DNS label",
    );
}

#[test]
fn mesh_defaults_and_overrides() {
    let config = valid(BACKENDS);
    assert_eq!(config.mesh, crate::model::Mesh::default());
    let config = valid(&with_backends(&mesh(
        "{trustDomain: example.org, mtls: {mode: STRICT}, \
          proxy: {connectTimeout: 250ms, maxHeaders: 10}}",
    )));
    assert_eq!(config.mesh.trust_domain, "example.org");
    assert_eq!(config.mesh.mtls_mode, crate::model::MtlsMode::Strict);
    assert_eq!(
        config.mesh.proxy.connect_timeout,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(config.mesh.proxy.max_headers, 10);
    assert_eq!(config.mesh.proxy.max_header_bytes, 60 * 1024);
    // spec may be left out entirely.
    let bare = "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n";
    assert_eq!(
        valid(&with_backends(bare)).mesh,
        crate::model::Mesh::default()
    );
}

#[test]
fn header_limits_are_bounded() {
    for (limit, value) in [
        ("maxHeaders", "1000000000000"),
        ("maxHeaderBytes", "9000000"),
    ] {
        let text = with_backends(&mesh(&format!("{{proxy: {{{limit}: {value}}}}}")));
        let error = single_error(
            &text,
            "Mesh default",
            &format!("spec.proxy.{limit}"),
            "out of range",
        );
        assert!(error.hint.unwrap().contains("from 1 to"));
    }
    let config = valid(&with_backends(&mesh("{proxy: {maxHeaders: 10000}}")));
    assert_eq!(config.mesh.proxy.max_headers, 10_000);
}

#[test]
fn only_one_mesh() {
    let text = format!(
        "{}---\n{}",
        with_backends(&mesh("{}")),
        mesh("{}").replace("default}", "other}")
    );
    let error = single_error(&text, "Mesh other", "", "more than one Mesh");
    assert!(error.hint.unwrap().contains("test.yaml:16"));
}

#[test]
fn mesh_sampling_percent_in_range() {
    let text = with_backends(&mesh(
        "{tracing: {otlpEndpoint: \"http://127.0.0.1:4317\", samplingPercent: 101}}",
    ));
    single_error(
        &text,
        "Mesh default",
        "spec.tracing.samplingPercent",
        "not a percentage",
    );
}

#[test]
fn mesh_trust_domain_is_lowercase_dns() {
    let text = with_backends(&mesh("{trustDomain: Cluster.Local}"));
    single_error(
        &text,
        "Mesh default",
        "spec.trustDomain",
        "not a valid SPIFFE trust domain",
    );
    let text = with_backends(&mesh("{trustDomain: \"\"}"));
    single_error(
        &text,
        "Mesh default",
        "spec.trustDomain",
        "not a valid SPIFFE trust domain",
    );
}

#[test]
fn mesh_proxy_durations_are_checked() {
    let text = with_backends(&mesh("{proxy: {headerReadTimeout: 10}}"));
    single_error(
        &text,
        "Mesh default",
        "spec.proxy.headerReadTimeout",
        "expected a string",
    );
    let text = with_backends(&mesh(
        "{proxy: {headerReadTimeout: 0s, bodyIdleTimeout: 3d}}",
    ));
    let errors = parse(&text).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.proxy.headerReadTimeout", "spec.proxy.bodyIdleTimeout"]
    );
}

#[test]
fn mesh_opaque_ports_are_tcp_ports() {
    let config = valid(&with_backends(&mesh(
        "{proxy: {opaquePorts: [5000, 3306, 5000, 65535]}}",
    )));
    assert_eq!(config.mesh.proxy.opaque_ports, [3306, 5000, 65535]);
    assert!(valid(BACKENDS).mesh.proxy.opaque_ports.is_empty());
    let text = with_backends(&mesh("{proxy: {opaquePorts: [3306, 0, 70000]}}"));
    let errors = parse(&text).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.proxy.opaquePorts[1]", "spec.proxy.opaquePorts[2]"]
    );
    assert!(errors[1].message.contains("70000 is not a TCP port"));
    let text = with_backends(&mesh("{proxy: {opaquePorts: mysql}}"));
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors[0].field, "spec.proxy.opaquePorts");
}

#[test]
fn mesh_otlp_endpoint_is_a_url() {
    let text = with_backends(&mesh("{tracing: {otlpEndpoint: \"127.0.0.1:4317\"}}"));
    single_error(
        &text,
        "Mesh default",
        "spec.tracing.otlpEndpoint",
        "not an http:// or https:// URL",
    );
}

#[test]
fn mesh_access_log_targets() {
    use crate::model::{AccessLog, AccessLogTarget};
    let target = |path: &str| {
        let text = with_backends(&mesh(&format!("{{accessLog: {{path: {path:?}}}}}")));
        parse(&text).map(|config| config.mesh.access_log)
    };
    let log = |target| Some(AccessLog { target });
    assert_eq!(target("/dev/stdout").unwrap(), log(AccessLogTarget::Stdout));
    assert_eq!(target("/dev/stderr").unwrap(), log(AccessLogTarget::Stderr));
    assert_eq!(
        target("/var/log/ficus/access.log").unwrap(),
        log(AccessLogTarget::File("/var/log/ficus/access.log".into()))
    );
    assert_eq!(parse(BACKENDS).unwrap().mesh.access_log, None);
}

#[test]
fn mesh_access_log_path_must_be_absolute() {
    for path in ["access.log", "", "/var/log/", "stdout"] {
        let text = with_backends(&mesh(&format!("{{accessLog: {{path: {path:?}}}}}")));
        single_error(
            &text,
            "Mesh default",
            "spec.accessLog.path",
            "not /dev/stdout, /dev/stderr or an absolute file path",
        );
    }
    let text = with_backends(&mesh("{accessLog: {path: /dev/stdout, format: text}}"));
    let errors = parse(&text).unwrap_err();
    assert!(
        errors[0].field.contains("accessLog") && errors[0].message.contains("format"),
        "{errors:?}"
    );
}
