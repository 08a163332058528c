//! `ficusctl inject` on real Deployment/Job/CronJob/Pod manifests, and the admission webhook
//! of the running `ficus-control` (AdmissionReview v1 over HTTPS): the patch it answers,
//! applied to the pod, gives exactly what `ficusctl inject` prints.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ficus_tests::control::{ficusctl, ControlPlane};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const WORKLOADS: &str = include_str!("../fixtures/k8s/workloads.yaml");
const DEADLINE: Duration = Duration::from_secs(10);

/// `ficusctl inject -o json` of `text`: the documents (a `List`'s items when several).
async fn inject(text: &str, extra: &[&str]) -> (Vec<Value>, String) {
    let mut args = vec!["inject", "-f", "-", "-o", "json"];
    args.extend_from_slice(extra);
    let out = ficusctl("http://127.0.0.1:9", &args, Some(text)).await;
    assert_eq!(out.code, 0, "ficusctl inject failed: {}", out.stderr);
    let value: Value = serde_json::from_str(&out.stdout).expect("JSON output");
    let documents = if value["kind"] == "List" && value.get("items").is_some() {
        value["items"].as_array().unwrap().clone()
    } else {
        vec![value]
    };
    (documents, out.stderr)
}

fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container_names(pod_spec: &Value, list: &str) -> Vec<String> {
    pod_spec[list]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn flag(container: &Value, name: &str) -> Option<String> {
    let args = container["args"].as_array()?;
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).and_then(Value::as_str).map(str::to_owned)
}

#[tokio::test]
async fn inject_rewrites_every_workload_kind_and_honours_annotations() {
    let (documents, stderr) = inject(WORKLOADS, &[]).await;
    assert_eq!(documents.len(), 6, "every document is printed, in order");

    let service = named(&documents, "Service", "web");
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"], "http",
        "passes through"
    );

    let web = &named(&documents, "Deployment", "web")["spec"]["template"]["spec"];
    assert_eq!(
        container_names(web, "initContainers"),
        ["ficus-init", "ficus-sidecar"]
    );
    assert_eq!(container_names(web, "containers"), ["web"]);
    let init = &web["initContainers"][0];
    assert_eq!(
        flag(init, "--exclude-outbound-ports").as_deref(),
        Some("5432")
    );
    assert_eq!(
        flag(init, "--exclude-cidrs").as_deref(),
        Some("169.254.169.254/32")
    );
    assert_eq!(
        flag(init, "--exclude-inbound-ports").as_deref(),
        Some("15000"),
        "only the admin port: the probes (on `management` and 8081) go to the sidecar"
    );
    assert!(stderr.is_empty(), "{stderr}");
    let app = &web["containers"][0];
    assert_eq!(
        app["readinessProbe"]["httpGet"],
        json!({"path": "/app-health/web/readyz", "port": 15000, "scheme": "HTTP"})
    );
    assert_eq!(app["readinessProbe"]["periodSeconds"], 5, "kept");
    assert_eq!(
        app["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/web/livez", "port": 15000, "scheme": "HTTP"}})
    );
    let sidecar = &web["initContainers"][1];
    let probes: Value = serde_json::from_str(
        &env(sidecar, "FICUS_APP_PROBES").expect("the original probes go to the sidecar"),
    )
    .unwrap();
    assert_eq!(
        probes,
        json!({
            "/app-health/web/readyz": {"httpGet": {"path": "/healthz/ready", "port": 8081,
                "scheme": "HTTP"}},
            "/app-health/web/livez": {"tcpSocket": {"port": 8081}},
        })
    );
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);

    let legacy = &named(&documents, "Deployment", "legacy-batch")["spec"]["template"]["spec"];
    assert!(legacy.get("initContainers").is_none(), "opted out");
    assert!(legacy.get("volumes").is_none(), "opted out");

    let job = &named(&documents, "Job", "reindex")["spec"]["template"]["spec"];
    assert_eq!(
        container_names(job, "initContainers"),
        ["ficus-init", "ficus-sidecar"],
        "a native sidecar does not keep a Job's pod running"
    );
    let cron = &named(&documents, "CronJob", "nightly-report")["spec"]["jobTemplate"]["spec"]
        ["template"]["spec"];
    assert_eq!(container_names(cron, "initContainers")[1], "ficus-sidecar");
    let pod = &named(&documents, "Pod", "debug")["spec"];
    assert_eq!(container_names(pod, "initContainers")[1], "ficus-sidecar");
}

#[tokio::test]
async fn injecting_the_output_again_changes_nothing() {
    let yaml = ficusctl(
        "http://127.0.0.1:9",
        &["inject", "-f", "-"],
        Some(WORKLOADS),
    )
    .await;
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    let again = ficusctl(
        "http://127.0.0.1:9",
        &["inject", "-f", "-"],
        Some(&yaml.stdout),
    )
    .await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.stdout, yaml.stdout);
    assert!(
        again.stderr.is_empty(),
        "nothing to warn about: {}",
        again.stderr
    );
}

#[tokio::test]
async fn the_sidecars_get_the_trust_domain_given() {
    let sidecar_flag = |documents: &[Value]| {
        let web = &named(documents, "Deployment", "web")["spec"]["template"]["spec"];
        flag(&web["initContainers"][1], "--trust-domain")
    };
    let (documents, _) = inject(WORKLOADS, &[]).await;
    assert_eq!(sidecar_flag(&documents).as_deref(), Some("cluster.local"));
    let (documents, _) = inject(WORKLOADS, &["--trust-domain", "example.org"]).await;
    assert_eq!(sidecar_flag(&documents).as_deref(), Some("example.org"));
    let yaml = ficusctl(
        "http://127.0.0.1:9",
        &["inject", "-f", "-", "--trust-domain", "example.org"],
        Some(WORKLOADS),
    )
    .await;
    assert_eq!(yaml.code, 0, "{}", yaml.stderr);
    assert!(
        yaml.stdout
            .contains("- --trust-domain\n        - example.org\n"),
        "{}",
        yaml.stdout
    );
    let bad = ficusctl(
        "http://127.0.0.1:9",
        &["inject", "-f", "-", "--trust-domain", "Example.org/x"],
        Some(WORKLOADS),
    )
    .await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stdout.is_empty());
    assert!(bad.stderr.contains("--trust-domain"), "{}", bad.stderr);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_document_named_and_nothing_printed() {
    let bad = WORKLOADS.replace(
        "ficus.dev/exclude-outbound-ports: \"5432\"",
        "ficus.dev/exclude-outbound-ports: \"postgres\"",
    );
    let out = ficusctl("http://127.0.0.1:9", &["inject", "-f", "-"], Some(&bad)).await;
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains(
            "<stdin>: document 2 (Deployment web): annotation ficus.dev/exclude-outbound-ports"
        ),
        "{}",
        out.stderr
    );
    let out = ficusctl("http://127.0.0.1:9", &["inject", "-f", "-"], Some("a: [\n")).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = ficusctl(
        "http://127.0.0.1:9",
        &["inject", "-f", "/nonexistent.yaml"],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot read /nonexistent.yaml"),
        "{}",
        out.stderr
    );
}

// === the webhook ===

/// A TLS client that verifies the webhook's certificate as the API server does: chain to the
/// `caBundle` (the mesh root) and the Service's DNS name.
fn webhook_tls(ca_pem: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.expect("PEM")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// POSTs `review` to `/inject` over HTTPS (`h2` or `http/1.1`); status and JSON body.
async fn post_review(
    control: &ControlPlane,
    address: std::net::SocketAddr,
    review: &Value,
    alpn: &[u8],
) -> (u16, Value) {
    let connector = webhook_tls(&std::fs::read_to_string(control.ca_file()).unwrap(), alpn);
    let tcp = tokio::time::timeout(DEADLINE, TcpStream::connect(address))
        .await
        .expect("connect in time")
        .expect("connect");
    let name = ServerName::try_from("ficus-control.ficus-system.svc").unwrap();
    let tls = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("the certificate verifies for the Service name");
    let request = http::Request::post("/inject")
        .header("content-type", "application/json")
        .header("host", "ficus-control.ficus-system.svc")
        .body(Full::new(Bytes::from(serde_json::to_vec(review).unwrap())))
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(tls);
    let response = if alpn == b"h2" {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        let mut request = request;
        *request.uri_mut() = "https://ficus-control.ficus-system.svc/inject"
            .parse()
            .unwrap();
        request.headers_mut().remove("host");
        tokio::time::timeout(DEADLINE, sender.send_request(request)).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http/1.1 handshake");
        tokio::spawn(connection);
        tokio::time::timeout(DEADLINE, sender.send_request(request)).await
    }
    .expect("answer in time")
    .expect("answer");
    let status = response.status().as_u16();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn admission_review(uid: &str, object: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "a2b4f0f2-2d4c-4f4e-9d33-1f0c8a3a6f1e",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// The pod a ReplicaSet of the `web` Deployment would create: its template plus what the API
/// server fills in before mutating webhooks run.
fn web_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7c9f8d6b5-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7c9f8d6b5"},
            "annotations": {
                "ficus.dev/exclude-outbound-ports": "5432",
                "ficus.dev/exclude-outbound-cidrs": "169.254.169.254/32",
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-7c9f8d6b5", "uid": "6f1f0b5e-7a52-4f51-9a8b-54e1b2f6e7aa",
                "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "serviceAccountName": "web",
            "serviceAccount": "web",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "containers": [{
                "name": "web",
                "image": "registry.example.com/shop/web:1.4.2",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "management", "containerPort": 8081, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": "management",
                    "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 1,
                    "successThreshold": 1, "failureThreshold": 3},
                "livenessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 10,
                    "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
        },
    })
}

/// RFC 4648 base64 (the webhook's `patch`).
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|c| *c == byte).expect("base64") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// Applies RFC 6902 `add`/`replace`/`remove` operations on object members (and `-`
/// appends), which is what the webhook emits; anything else fails the test.
fn apply_patch(target: &mut Value, operations: &Value) {
    for operation in operations.as_array().expect("a patch is a list") {
        let path = operation["path"].as_str().expect("path");
        let (parent, last) = path.rsplit_once('/').expect("pointer");
        let last = last.replace("~1", "/").replace("~0", "~");
        let parent = target.pointer_mut(parent).expect("parent exists");
        match (operation["op"].as_str(), parent) {
            (Some("add" | "replace"), Value::Object(map)) => {
                map.insert(last, operation["value"].clone());
            }
            (Some("add"), Value::Array(list)) if last == "-" => {
                list.push(operation["value"].clone());
            }
            (Some("remove"), Value::Object(map)) => {
                map.remove(&last).expect("removed member exists");
            }
            other => panic!("unexpected operation {operation} on {other:?}"),
        }
    }
}

fn metric(text: &str, result: &str) -> f64 {
    let series = format!("ficus_control_webhook_requests_total{{result=\"{result}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn the_webhook_patch_gives_what_ficusctl_inject_prints() {
    let webhook = ficus_tests::free_addr();
    let control = ControlPlane::start_tls(None, &["--webhook", &webhook.to_string()]).await;
    let pod = web_pod();

    let mut answers = Vec::new();
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let (status, answer) =
            post_review(&control, webhook, &admission_review("uid-1", &pod), alpn).await;
        assert_eq!(status, 200, "{answer}");
        answers.push(answer);
    }
    assert_eq!(
        answers[0], answers[1],
        "the same answer over h2 and HTTP/1.1"
    );
    let answer = &answers[0];
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "uid-1");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let operations: Value =
        serde_json::from_slice(&base64_decode(response["patch"].as_str().unwrap())).unwrap();
    let mut patched = pod.clone();
    apply_patch(&mut patched, &operations);

    let (printed, _) = inject(&serde_json::to_string(&pod).unwrap(), &[]).await;
    assert_eq!(printed.len(), 1);
    assert_eq!(patched, printed[0], "webhook and ficusctl inject agree");
    assert_eq!(
        container_names(&patched["spec"], "initContainers"),
        ["ficus-init", "ficus-sidecar"]
    );
    assert!(
        response.get("warnings").is_none(),
        "no probe port bypasses the mesh: {response}"
    );
    let containers = operations
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == "/spec/containers")
        .expect("the app containers are patched");
    assert_eq!(containers["op"], "replace");
    assert_eq!(
        containers["value"][0]["readinessProbe"]["httpGet"],
        json!({"path": "/app-health/web/readyz", "port": 15000, "scheme": "HTTP"})
    );
    assert_eq!(
        containers["value"][0]["livenessProbe"]["httpGet"]["path"],
        "/app-health/web/livez"
    );
    assert_eq!(
        containers["value"][0]["readinessProbe"]["timeoutSeconds"], 1,
        "the probe's own settings stay"
    );

    // Re-injection (e.g. a pod from a template ficusctl already injected): allowed, no patch.
    let (_, again) = post_review(
        &control,
        webhook,
        &admission_review("uid-2", &patched),
        b"h2",
    )
    .await;
    assert_eq!(again["response"]["allowed"], true);
    assert_eq!(again["response"]["uid"], "uid-2");
    assert!(again["response"].get("patch").is_none(), "{again}");

    // A pod injection cannot handle is admitted unchanged, with the reason as a warning.
    let mut bad = pod.clone();
    bad["metadata"]["annotations"]["ficus.dev/exclude-inbound-ports"] = json!("http");
    let (_, failed) = post_review(&control, webhook, &admission_review("uid-3", &bad), b"h2").await;
    assert_eq!(failed["response"]["allowed"], true, "fail open");
    assert!(failed["response"].get("patch").is_none(), "{failed}");
    assert!(
        failed["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("ficus.dev/exclude-inbound-ports"),
        "{failed}"
    );

    // Not an AdmissionReview: 400, so the API server applies failurePolicy.
    let (status, _) = post_review(&control, webhook, &json!({"kind": "Pod"}), b"h2").await;
    assert_eq!(status, 400);

    let metrics = ficus_tests::client::get(control.http, "control", "/metrics")
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert_eq!(metric(&text, "injected"), 2.0, "{text}");
    assert_eq!(metric(&text, "skipped"), 1.0);
    assert_eq!(metric(&text, "error"), 1.0);
    assert_eq!(metric(&text, "invalid"), 1.0);
}

#[tokio::test]
async fn the_webhook_needs_the_ca() {
    let (status, stderr) = ficus_tests::control::run_control(&[
        "--insecure",
        "--data",
        "/nonexistent/ficus-data",
        "--webhook",
        "127.0.0.1:0",
    ])
    .await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--webhook needs the CA"), "{stderr}");
}

// === probes under mTLS STRICT, end to end ===

/// The value of the env var `name` of `container`.
fn env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

/// GETs `path` on `address` from `ns` every 100 ms until it answers 200; panics with `log()`
/// after 30 s.
async fn wait_for_200(
    ns: &ficus_tests::netns::NetNs,
    address: std::net::SocketAddr,
    path: &str,
    log: impl Fn() -> String,
) {
    let started = std::time::Instant::now();
    loop {
        match ficus_tests::netns::http_get(ns, address, "10.77.0.1", path, &[]).await {
            Ok(answer) if answer.status == 200 => return,
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{address}{path} never answered 200 in {}:\n{}",
            ns.name(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The "pod" and a "kubelet" namespace (10.77.0.1 and 10.77.0.2), created and removed by the
/// test. The pod runs the ficus-init container's exact redirect command from `ficusctl
/// inject`, a STRICT transparent sidecar as uid 1337 with the injected `FICUS_APP_PROBES` and
/// its certificate from the real control plane, and an app serving on 8080 whose readiness
/// (httpGet) and liveness (tcpSocket) probes are on that same serving port. kubelet's
/// plaintext probes go, as rewritten, to the sidecar's admin port, which relays them to the
/// app; plaintext to the serving port is redirected to the sidecar and refused; and a caller's
/// sidecar (explicit mode, in the kubelet namespace) still reaches the app on 10.77.0.1:8080
/// over mTLS. With `ficus.dev/rewrite-app-probes: "false"` the serving port is excluded
/// instead: kubelet's probe passes but the mTLS caller fails, which is why probes are
/// rewritten. Root only (CI runs as root).
#[tokio::test]
async fn kubelet_probes_pass_under_mtls_strict_with_the_injected_redirect() {
    use ficus_tests::netns::{self, http_get, link, NetNs, NsHttpServer, PushMesh};
    use ficus_tests::process::{binary, Sidecar, SidecarOptions};

    if let Some(reason) = netns::skip_reason() {
        eprintln!(
            "SKIPPED kubelet_probes_pass_under_mtls_strict_with_the_injected_redirect: {reason}"
        );
        return;
    }
    let addr = |s: &str| -> std::net::SocketAddr { s.parse().unwrap() };

    // The most common Deployment: probed on its serving port.
    let deployment = |annotations: Value| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                "spec": {"serviceAccountName": "web", "containers": [{
                    "name": "web", "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                    "livenessProbe": {"tcpSocket": {"port": 8080}},
                }]}}},
        })
    };
    let strings = |container: &Value| -> Vec<String> {
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let (documents, stderr) = inject(&deployment(json!({})).to_string(), &[]).await;
    assert!(stderr.is_empty(), "nothing bypasses the mesh: {stderr}");
    let pod_spec = &documents[0]["spec"]["template"]["spec"];
    let init_args = strings(&pod_spec["initContainers"][0]);
    assert_eq!(init_args[0], "redirect");
    assert_eq!(
        flag(&pod_spec["initContainers"][0], "--exclude-inbound-ports").as_deref(),
        Some("15000"),
        "the serving port stays redirected"
    );
    let sidecar_container = &pod_spec["initContainers"][1];
    let sidecar_admin = flag(sidecar_container, "--admin").unwrap();
    assert_eq!(sidecar_admin, "0.0.0.0:15000");
    let app_probes = env(sidecar_container, "FICUS_APP_PROBES").expect("FICUS_APP_PROBES");
    let app_container = &pod_spec["containers"][0];
    let readiness = &app_container["readinessProbe"]["httpGet"];
    let liveness = &app_container["livenessProbe"]["httpGet"];
    assert_eq!(readiness["port"], 15000);
    assert_eq!(liveness["port"], 15000);

    let pod = NetNs::create("pod").expect("pod namespace");
    let kubelet = NetNs::create("kubelet").expect("kubelet namespace");
    link(&pod, &["10.77.0.1/24"], &kubelet, &["10.77.0.2/24"]).expect("veth pair");
    // The control plane (mesh CA) on the host, reached through relays on each namespace's
    // 127.0.0.1:15012 (loopback is never intercepted); workloads web and payments.
    let mesh = PushMesh::start(&pod, &kubelet).await;
    mesh.apply(
        "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
         spec: {mtls: {mode: STRICT}}\n---\n\
         apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: web, namespace: shop}\n\
         spec: {endpoints: [{address: \"10.77.0.1:8080\", \
         identity: \"spiffe://cluster.local/ns/shop/sa/web\"}]}\n",
    )
    .await;
    // The app listens on every address of the pod, as apps in pods do.
    let app = NsHttpServer::start(&pod, addr("0.0.0.0:8080"), "app").unwrap();

    let redirect = |args: &[String]| {
        let output = netns::run(
            pod.command(binary("ficus-sidecar").to_str().unwrap())
                .args(args),
        )
        .expect("run ficus-sidecar redirect");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    redirect(&init_args);

    let web = mesh.options("web");
    let mut extra = web.extra.clone();
    extra.extend([
        "--transparent".to_owned(),
        "--app-probes".to_owned(),
        app_probes,
    ]);
    let _sidecar = Sidecar::spawn(
        "",
        SidecarOptions {
            addresses: Some((
                addr("127.0.0.1:15001"),
                addr("0.0.0.0:15006"),
                addr(&sidecar_admin),
            )),
            app: Some(addr("127.0.0.1:9")),
            extra,
            prefix: netns::proxy_prefix(&pod),
            ..web
        },
    );
    // The caller: payments' sidecar in explicit mode (no redirect in its namespace).
    let caller = || {
        Sidecar::spawn(
            "",
            SidecarOptions {
                addresses: Some((
                    addr("127.0.0.1:15001"),
                    addr("127.0.0.1:15006"),
                    addr("127.0.0.1:15000"),
                )),
                prefix: kubelet.exec_prefix(),
                ..mesh.options("payments")
            },
        )
    };
    let first_caller = caller();

    // kubelet's startup probe: /ready on the pod IP's admin port, until it passes; the
    // caller's sidecar ready too.
    let log = || mesh.control.log();
    wait_for_200(&kubelet, addr("10.77.0.1:15000"), "/ready", log).await;
    wait_for_200(&kubelet, addr("127.0.0.1:15000"), "/ready", log).await;

    // The app's probes, plaintext from kubelet to the admin port as rewritten, reach the app.
    for probe in [readiness, liveness] {
        let path = probe["path"].as_str().unwrap();
        let probed = http_get(
            &kubelet,
            addr("10.77.0.1:15000"),
            "10.77.0.1",
            path,
            &[("user-agent", "kube-probe/1.31")],
        )
        .await
        .expect("probe answered");
        assert_eq!(probed.status, 200, "{path}: {}", probed.body);
    }
    assert_eq!(app.count(), 1, "the readiness probe's GET reached the app");
    assert_eq!(
        app.received.lock().unwrap()[0]["user-agent"],
        "kube-probe/1.31"
    );

    // An mTLS caller reaches the app on its serving port.
    let called = http_get(&kubelet, addr("127.0.0.1:15001"), "web", "/", &[])
        .await
        .expect("the caller's sidecar answered");
    assert_eq!((called.status, called.body.as_str()), (200, "app"));
    assert_eq!(
        app.received.lock().unwrap()[1]["x-ficus-peer-identity"],
        "spiffe://cluster.local/ns/shop/sa/payments",
        "over mTLS"
    );

    // Plaintext to the serving port is redirected to the sidecar, which is STRICT.
    let refused = http_get(&kubelet, addr("10.77.0.1:8080"), "10.77.0.1", "/", &[]).await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status != 200),
        "plaintext reached past the STRICT sidecar: {refused:?}"
    );
    assert_eq!(app.count(), 2, "the serving port stays inside the mesh");

    // The opt-out: probes left alone and their port excluded. kubelet reaches the app, but the
    // caller's ClientHello now lands on the app's plaintext server.
    let (documents, stderr) = inject(
        &deployment(json!({"ficus.dev/rewrite-app-probes": "false"})).to_string(),
        &[],
    )
    .await;
    assert!(stderr.contains("port 8080"), "{stderr}");
    let excluded = strings(&documents[0]["spec"]["template"]["spec"]["initContainers"][0]);
    assert_eq!(
        flag(
            &documents[0]["spec"]["template"]["spec"]["initContainers"][0],
            "--exclude-inbound-ports"
        )
        .as_deref(),
        Some("8080,15000")
    );
    let mut cleanup = init_args.clone();
    cleanup.push("--cleanup".into());
    redirect(&cleanup);
    redirect(&excluded);
    let direct = http_get(
        &kubelet,
        addr("10.77.0.1:8080"),
        "10.77.0.1",
        "/healthz",
        &[],
    )
    .await
    .expect("probe answered");
    assert_eq!(direct.status, 200);
    // A new caller: connections made before the change keep their redirect (conntrack).
    drop(first_caller);
    let _caller = caller();
    wait_for_200(&kubelet, addr("127.0.0.1:15000"), "/ready", log).await;
    let broken = http_get(&kubelet, addr("127.0.0.1:15001"), "web", "/", &[]).await;
    assert!(
        broken.as_ref().map_or(true, |r| r.status != 200),
        "an mTLS caller cannot reach an excluded port: {broken:?}"
    );
}
