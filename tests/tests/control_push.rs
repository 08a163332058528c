//! Push mode end to end: the real `ficus-control`, `ficusctl` and push-mode sidecars.
//! Applies change routes; a NACK keeps the old config; `kill -9` of the control plane under
//! traffic loses nothing; a sidecar restarted while the control plane is down serves from its
//! cache; a burst of applies coalesces into few pushes.

use std::time::{Duration, Instant};

use ficus_tests::client::{self, Load};
use ficus_tests::control::{ControlPlane, CtlOutput};
use ficus_tests::process::{Sidecar, SidecarOptions};
use ficus_tests::until;
use ficus_tests::upstream::Upstream;

fn config(target: &str, a: std::net::SocketAddr, b: std::net::SocketAddr, tag: u64) -> String {
    let filters = format!(
        "    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: \
         {{set: [{{name: x-tag, value: \"{tag}\"}}]}}}}]\n"
    );
    ficus_tests::svc_config(a, b, target, &filters)
}

#[track_caller]
fn ok(output: &CtlOutput) -> &str {
    assert_eq!(
        output.code, 0,
        "ficusctl failed:\n{}{}",
        output.stdout, output.stderr
    );
    &output.stdout
}

async fn apply(control: &ControlPlane, yaml: &str) -> String {
    ok(&control.ctl_stdin(&["apply", "-f", "-"], yaml).await).to_owned()
}

/// What `svc` answers through `sidecar` (the Backend's name, in these configs).
async fn svc_text(sidecar: &Sidecar) -> String {
    client::get(sidecar.outbound, "svc", "/")
        .await
        .unwrap()
        .text()
}

/// Waits (20 s at most) until `svc` answers `text`.
async fn until_svc_text(sidecar: &Sidecar, text: &str) {
    until(
        &format!("route to {text}"),
        Duration::from_secs(20),
        || async {
            client::get(sidecar.outbound, "svc", "/")
                .await
                .is_ok_and(|r| r.text() == text)
        },
    )
    .await;
}

async fn version(sidecar: &Sidecar) -> u64 {
    sidecar.config().await["version"].as_u64().unwrap_or(0)
}

fn push_options(node: &str) -> SidecarOptions {
    SidecarOptions {
        node_id: Some(node.to_owned()),
        ..SidecarOptions::default()
    }
}

#[tokio::test]
async fn applies_change_routes_and_a_nack_keeps_the_old_config() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = ControlPlane::start().await;
    let sidecar = Sidecar::start_push(&control.grpc_url(), push_options("web-1")).await;
    let ready = client::get(sidecar.admin, "admin", "/ready").await.unwrap();
    assert_eq!(ready.status, 503, "not ready before the first config");

    assert!(apply(&control, &config("a", a.addr, b.addr, 1))
        .await
        .starts_with("applied version 1"));
    sidecar.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(svc_text(&sidecar).await, "a");

    apply(&control, &config("b", a.addr, b.addr, 2)).await;
    until_svc_text(&sidecar, "b").await;
    let status: serde_json::Value =
        serde_json::from_str(ok(&control.ctl(&["status", "-o", "json"]).await)).unwrap();
    let me = status["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node_id"] == "web-1")
        .expect("listed");
    assert_eq!(me["acked_version"], 2);
    assert_eq!(me["connected"], true);

    // Valid in the store, but this sidecar cannot listen there: it NACKs and keeps version 2.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: db, namespace: shop}}\n\
         spec: {{protocol: tcp, listen: \"{}\", endpoints: [{{address: \"127.0.0.1:5432\"}}]}}\n",
        taken.local_addr().unwrap()
    );
    apply(&control, &tcp).await;
    until("the NACK in status", Duration::from_secs(20), || async {
        let status = control.get_json("/v1/status").await;
        status["sidecars"][0]["last_nack"]
            .as_str()
            .is_some_and(|r| r.contains("cannot listen"))
    })
    .await;
    let status = control.get_json("/v1/status").await;
    assert_eq!(status["sidecars"][0]["nacked_version"], 3);
    assert_eq!(status["sidecars"][0]["acked_version"], 2);
    assert_eq!(
        version(&sidecar).await,
        2,
        "the sidecar still serves version 2"
    );
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!(
        (response.text().as_str(), response.header("x-tag")),
        ("b", "2")
    );
    let metrics = client::get(control.http, "c", "/metrics")
        .await
        .unwrap()
        .text();
    assert!(metrics.contains("ficus_control_nacks_total 1"), "{metrics}");
}

/// The acked and NACKed versions of sidecar `node` in `/v1/status`.
async fn answers(control: &ControlPlane, node: &str) -> (serde_json::Value, serde_json::Value) {
    let status = control.get_json("/v1/status").await;
    let me = status["sidecars"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["node_id"] == node).cloned())
        .unwrap_or_default();
    (me["acked_version"].clone(), me["nacked_version"].clone())
}

#[tokio::test]
async fn an_empty_config_is_pushed_and_acked() {
    let a = Upstream::start("a").await;
    let control = ControlPlane::start().await;
    let web = Sidecar::start_push(&control.grpc_url(), push_options("web-1")).await;
    // Its scope (its own namespace and `quiet`) holds nothing of what is applied.
    let lonely = Sidecar::start_push(
        &control.grpc_url(),
        SidecarOptions {
            namespace: Some("lonely".to_owned()),
            extra: vec!["--reach".to_owned(), "quiet".to_owned()],
            ..push_options("lonely-1")
        },
    )
    .await;
    let backend = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: a, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{}\"}}]}}\n",
        a.addr
    );
    apply(&control, &backend).await;
    for node in ["web-1", "lonely-1"] {
        until("version 1 acked", Duration::from_secs(20), || async {
            answers(&control, node).await.0 == 1
        })
        .await;
    }
    lonely.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(lonely.config().await["documents"], serde_json::json!([]));
    assert_eq!(
        web.config().await["documents"].as_array().map(Vec::len),
        Some(1)
    );

    let deleted = ok(&control.ctl(&["delete", "backend", "a", "-n", "shop"]).await).to_owned();
    assert!(deleted.starts_with("deleted: version 2"), "{deleted}");
    until("version 2 acked", Duration::from_secs(20), || async {
        answers(&control, "web-1").await.0 == 2
    })
    .await;
    assert_eq!(answers(&control, "web-1").await.1, serde_json::Value::Null);
    let served = web.config().await;
    assert_eq!(served["version"], 2);
    assert_eq!(served["documents"], serde_json::json!([]));
    assert_eq!(served["last_error"], serde_json::Value::Null);
    // The deleted Backend is gone from the data plane too.
    let response = client::get(web.outbound, "a.shop", "/").await.unwrap();
    assert_eq!(response.status, 502);
}

#[tokio::test]
async fn kill_9_of_the_control_plane_under_traffic_loses_nothing() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut control = ControlPlane::start().await;
    let sidecars = [
        Sidecar::start_push(&control.grpc_url(), push_options("web-1")).await,
        Sidecar::start_push(&control.grpc_url(), push_options("web-2")).await,
    ];
    apply(&control, &config("a", a.addr, b.addr, 1)).await;
    for sidecar in &sidecars {
        sidecar.wait_ready(Duration::from_secs(20)).await;
    }
    let load = Load::start(
        sidecars.iter().map(|s| s.outbound),
        "svc",
        Duration::from_millis(2),
    );

    assert!(apply(&control, &config("b", a.addr, b.addr, 2))
        .await
        .starts_with("applied version 2"));
    control.kill_9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    control.restart().await;
    assert!(ok(&control.ctl(&["get"]).await).contains("# ficus config version 2"));
    assert!(
        ok(&control.ctl(&["history"]).await).lines().count() >= 3,
        "history has both versions"
    );
    for sidecar in &sidecars {
        until(
            "the sidecar to converge on version 2",
            Duration::from_secs(30),
            || async { version(sidecar).await == 2 },
        )
        .await;
    }
    let (served, failed) = load.stop().await;
    assert!(served + failed > 50, "traffic flowed");
    assert_eq!(
        failed, 0,
        "no request failed while the control plane was down"
    );
    let status = control.get_json("/v1/status").await;
    let acked: Vec<_> = status["sidecars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["acked_version"].clone())
        .collect();
    assert_eq!(acked, [2, 2], "{status}");
}

#[tokio::test]
async fn a_sidecar_restarted_while_the_control_plane_is_down_serves_from_its_cache() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut control = ControlPlane::start().await;
    let cache = tempfile::tempdir().unwrap();
    let options = SidecarOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..push_options("web-1")
    };
    let sidecar = Sidecar::start_push(&control.grpc_url(), options.clone()).await;
    apply(&control, &config("b", a.addr, b.addr, 7)).await;
    sidecar.wait_ready(Duration::from_secs(20)).await;
    // The ACK leaves once the snapshot is in the cache (ready comes at the swap, just before).
    until("the ACK", Duration::from_secs(20), || async {
        control.get_json("/v1/status").await["sidecars"][0]["acked_version"] == 1
    })
    .await;
    control.kill_9();
    drop(sidecar);

    let restarted = Sidecar::start_push(&control.grpc_url(), options).await;
    restarted.wait_ready(Duration::from_secs(20)).await;
    let response = client::get(restarted.outbound, "svc", "/").await.unwrap();
    assert_eq!(
        (response.text().as_str(), response.header("x-tag")),
        ("b", "7")
    );
    let config = restarted.config().await;
    assert_eq!(config["version"], 1);
    assert!(
        config["source"].as_str().unwrap().starts_with("cache:"),
        "{config}"
    );

    // When the control plane is back, the sidecar reconnects and reports what it serves.
    control.restart().await;
    until(
        "the sidecar to reconnect",
        Duration::from_secs(30),
        || async {
            let status = control.get_json("/v1/status").await;
            status["sidecars"][0]["connected"] == true
                && status["sidecars"][0]["acked_version"] == 1
        },
    )
    .await;
}

/// A version that changed nothing this sidecar sees (another namespace) reaches it as
/// `unchanged`; its cache is rewritten under that version, so a restart from the cache never
/// serves an older version than the one it reported.
#[tokio::test]
async fn an_unchanged_version_bump_reaches_the_cache() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut control = ControlPlane::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut options = SidecarOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..push_options("web-1")
    };
    options
        .extra
        .extend(["--reach".to_owned(), "shop".to_owned()]);
    let sidecar = Sidecar::start_push(&control.grpc_url(), options.clone()).await;
    apply(&control, &config("b", a.addr, b.addr, 7)).await;
    sidecar.wait_ready(Duration::from_secs(20)).await;
    apply(
        &control,
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: ledger, namespace: data}\n\
         spec: {endpoints: [{address: \"127.0.0.1:9\"}]}\n",
    )
    .await;
    until("the ACK of version 2", Duration::from_secs(20), || async {
        control.get_json("/v1/status").await["sidecars"][0]["acked_version"] == 2
    })
    .await;
    assert_eq!(version(&sidecar).await, 2);
    // The bump rebuilt the snapshot: its documents are still those of version 1.
    let documents = sidecar.config().await["documents"].clone();
    let kinds: Vec<&str> = documents
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"HTTPRoute"), "{documents}");
    control.kill_9();
    drop(sidecar);

    let restarted = Sidecar::start_push(&control.grpc_url(), options).await;
    restarted.wait_ready(Duration::from_secs(20)).await;
    let config = restarted.config().await;
    assert!(
        config["source"].as_str().unwrap().starts_with("cache:"),
        "{config}"
    );
    assert_eq!(config["version"], 2, "the cache went back to version 1");
    let response = client::get(restarted.outbound, "svc", "/").await.unwrap();
    assert_eq!(response.header("x-tag"), "7");
}

#[tokio::test]
async fn a_burst_of_applies_coalesces_into_few_pushes() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = ControlPlane::start().await;
    let sidecars = [
        Sidecar::start_push(&control.grpc_url(), push_options("web-1")).await,
        Sidecar::start_push(&control.grpc_url(), push_options("web-2")).await,
    ];
    apply(&control, &config("a", a.addr, b.addr, 0)).await;
    for sidecar in &sidecars {
        sidecar.wait_ready(Duration::from_secs(20)).await;
    }
    let pushes = |text: &str| client::Metrics::parse(text).sum("ficus_control_pushes_total", &[]);
    let before = pushes(
        &client::get(control.http, "c", "/metrics")
            .await
            .unwrap()
            .text(),
    );
    let started = Instant::now();
    for tag in 1..=50 {
        apply(
            &control,
            &config(if tag % 2 == 0 { "a" } else { "b" }, a.addr, b.addr, tag),
        )
        .await;
    }
    let burst = started.elapsed();
    for sidecar in &sidecars {
        until("version 51 everywhere", Duration::from_secs(20), || async {
            version(sidecar).await == 51
        })
        .await;
        let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
        assert_eq!(
            (response.text().as_str(), response.header("x-tag")),
            ("a", "50")
        );
    }
    let after = pushes(
        &client::get(control.http, "c", "/metrics")
            .await
            .unwrap()
            .text(),
    );
    let per_sidecar = (after - before) / 2.0;
    // Applies came every ~{burst/50}; debounced, each sidecar sees a handful of pushes. Each
    // push but the last needs 100 ms without an apply inside the burst, hence the bound. It
    // is loose because a slow CI machine may space the applies past the quiet time (then
    // every apply may be pushed: coalescing is shown only by a burst well under 5 s, which
    // the debounce's unit tests cover on paused time).
    let bound = 2.0 + burst.as_secs_f64() * 10.0;
    assert!(
        per_sidecar <= bound,
        "{per_sidecar} pushes per sidecar for 50 applies in {burst:?}"
    );
    eprintln!("50 applies in {burst:?} → {per_sidecar} pushes per sidecar");
}

/// A scripted sidecar on the push stream: it ACKs only when told to.
struct ScriptedSidecar {
    to_control: tokio::sync::mpsc::Sender<ficus_config::wire::SidecarMessage>,
    from_control: tonic::Streaming<ficus_config::wire::ControlMessage>,
}

impl ScriptedSidecar {
    async fn subscribe(control: &ControlPlane) -> Self {
        Self::subscribe_serving(control, 0, "").await
    }

    /// Subscribes saying it serves `version` with documents of `digest`.
    async fn subscribe_serving(control: &ControlPlane, version: u64, digest: &str) -> Self {
        use ficus_config::wire::config_discovery_client::ConfigDiscoveryClient;
        use ficus_config::wire::{sidecar_message, Hello, SidecarMessage};
        let channel = ficus_tests::grpc::connect_plain(control.grpc)
            .await
            .unwrap();
        let (to_control, rx) = tokio::sync::mpsc::channel(8);
        let hello = SidecarMessage {
            kind: Some(sidecar_message::Kind::Hello(Hello {
                node_id: "scripted-1".into(),
                workload: "web".into(),
                namespace: "shop".into(),
                version,
                digest: digest.into(),
                ..Hello::default()
            })),
        };
        to_control.send(hello).await.unwrap();
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|message| (message, rx))
        });
        let mut client = ConfigDiscoveryClient::with_origin(channel.clone(), channel.origin());
        let from_control =
            tokio::time::timeout(Duration::from_secs(10), client.subscribe(outbound))
                .await
                .unwrap()
                .unwrap()
                .into_inner();
        Self {
            to_control,
            from_control,
        }
    }

    async fn next(&mut self) -> ficus_config::wire::Snapshot {
        use ficus_config::wire::control_message::Kind;
        let message = tokio::time::timeout(Duration::from_secs(10), self.from_control.message())
            .await
            .expect("a push within 10 s")
            .unwrap()
            .expect("the stream is open");
        let Some(Kind::Snapshot(snapshot)) = message.kind else {
            panic!("not a snapshot");
        };
        snapshot
    }

    async fn nack(&self, snapshot: &ficus_config::wire::Snapshot, serving_version: u64) {
        use ficus_config::wire::{sidecar_message, Nack, SidecarMessage};
        let nack = SidecarMessage {
            kind: Some(sidecar_message::Kind::Nack(Nack {
                version: snapshot.version,
                nonce: snapshot.nonce.clone(),
                error: "refused on purpose".into(),
                serving_version,
            })),
        };
        self.to_control.send(nack).await.unwrap();
    }

    async fn ack(&self, snapshot: &ficus_config::wire::Snapshot) {
        use ficus_config::wire::{sidecar_message, Ack, SidecarMessage};
        let ack = SidecarMessage {
            kind: Some(sidecar_message::Kind::Ack(Ack {
                version: snapshot.version,
                nonce: snapshot.nonce.clone(),
            })),
        };
        self.to_control.send(ack).await.unwrap();
    }
}

/// A rollback right after an apply, before the sidecar has answered the apply's push: the
/// sidecar may yet take that push, so the rollback's push carries its documents rather than
/// "unchanged" (which the sidecar would refuse, and then keep the rolled-back config).
#[tokio::test]
async fn a_rollback_before_the_previous_push_is_answered_carries_its_documents() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = ControlPlane::start().await;
    apply(&control, &config("a", a.addr, b.addr, 1)).await;
    let mut sidecar = ScriptedSidecar::subscribe(&control).await;
    let first = sidecar.next().await;
    assert_eq!(first.version, 1);
    sidecar.ack(&first).await;
    until(
        "the control plane saw the ACK",
        Duration::from_secs(10),
        || async {
            let status = control.get_json("/v1/status").await;
            status["sidecars"][0]["acked_version"] == 1
        },
    )
    .await;

    apply(&control, &config("b", a.addr, b.addr, 2)).await;
    let second = sidecar.next().await;
    assert_eq!(second.version, 2);
    assert!(!second.unchanged);
    // Not answered yet; version 3 has version 1's documents.
    ok(&control.ctl(&["rollback", "1"]).await);
    let third = sidecar.next().await;
    assert_eq!(third.version, 3);
    assert!(
        !third.unchanged,
        "version 2 may have been taken: the documents must come"
    );
    assert_eq!(third.documents, first.documents);
    assert_eq!(third.digest, first.digest);
}

/// The sidecar ACKs a push after a newer one went out (its ACK is stale: ignored), then NACKs
/// the newer one saying it serves the older: the control plane must not go on believing it
/// serves what it did before both, so a rollback to that comes with its documents rather than
/// `unchanged` (which the sidecar would refuse, staying on the version it took).
#[tokio::test]
async fn after_a_nack_naming_another_served_version_the_documents_come_in_full() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = ControlPlane::start().await;
    apply(&control, &config("a", a.addr, b.addr, 1)).await;
    let mut sidecar = ScriptedSidecar::subscribe(&control).await;
    let first = sidecar.next().await;
    sidecar.ack(&first).await;
    until("the ACK of version 1", Duration::from_secs(10), || async {
        control.get_json("/v1/status").await["sidecars"][0]["acked_version"] == 1
    })
    .await;
    apply(&control, &config("b", a.addr, b.addr, 2)).await;
    let second = sidecar.next().await;
    apply(&control, &config("b", a.addr, b.addr, 3)).await;
    let third = sidecar.next().await;
    assert_eq!((second.version, third.version), (2, 3));
    // Version 2 was taken (its ACK comes late), version 3 refused.
    sidecar.ack(&second).await;
    sidecar.nack(&third, 2).await;
    until("the NACK of version 3", Duration::from_secs(10), || async {
        control.get_json("/v1/status").await["sidecars"][0]["nacked_version"] == 3
    })
    .await;
    ok(&control.ctl(&["rollback", "1"]).await);
    let fourth = sidecar.next().await;
    assert_eq!(fourth.version, 4);
    assert!(
        !fourth.unchanged,
        "the sidecar serves version 2: version 1's documents must come"
    );
    assert_eq!(fourth.documents, first.documents);
}

/// A sidecar that says it serves the current version number but with other documents (its
/// cache came from another control plane or another scope) gets the documents.
#[tokio::test]
async fn a_sidecar_at_the_same_version_with_other_documents_gets_them() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = ControlPlane::start().await;
    apply(&control, &config("a", a.addr, b.addr, 1)).await;
    let mut sidecar = ScriptedSidecar::subscribe_serving(&control, 1, "not-these-documents").await;
    let pushed = sidecar.next().await;
    assert_eq!(pushed.version, 1);
    assert!(!pushed.unchanged);
    assert!(!pushed.documents.is_empty());
}

/// A control plane that answers every stream with `script` (then keeps it open, or ends it
/// when the script ends in an error). Stands in for `ficus-control` where the real one cannot
/// be made to misbehave on demand; the sidecar is the real binary.
#[derive(Clone)]
struct ScriptedControl {
    subscriptions: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    script: Vec<Result<ficus_config::wire::ControlMessage, tonic::Status>>,
    /// A pause before each message after the first.
    gap: Duration,
}

#[tonic::async_trait]
impl ficus_config::wire::config_discovery_server::ConfigDiscovery for ScriptedControl {
    type SubscribeStream = std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<ficus_config::wire::ControlMessage, tonic::Status>,
                > + Send,
        >,
    >;

    async fn subscribe(
        &self,
        _request: tonic::Request<tonic::Streaming<ficus_config::wire::SidecarMessage>>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        use futures_util::StreamExt;
        self.subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ends = self.script.last().is_some_and(Result::is_err);
        let gap = self.gap;
        let script = futures_util::stream::iter(self.script.clone().into_iter().enumerate()).then(
            move |(n, message)| async move {
                if n > 0 {
                    tokio::time::sleep(gap).await;
                }
                message
            },
        );
        if ends {
            Ok(tonic::Response::new(Box::pin(script)))
        } else {
            Ok(tonic::Response::new(Box::pin(
                script.chain(futures_util::stream::pending()),
            )))
        }
    }
}

impl ScriptedControl {
    /// Serves on a loopback port; its `http://` URL and the subscriptions counter.
    async fn start(
        script: Vec<Result<ficus_config::wire::ControlMessage, tonic::Status>>,
    ) -> (
        String,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        Self::start_paced(script, Duration::ZERO).await
    }

    /// [`ScriptedControl::start`], with `gap` before each message after the first.
    async fn start_paced(
        script: Vec<Result<ficus_config::wire::ControlMessage, tonic::Status>>,
        gap: Duration,
    ) -> (
        String,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        use ficus_config::wire::config_discovery_server::ConfigDiscoveryServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let subscriptions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = ConfigDiscoveryServer::new(Self {
            subscriptions: subscriptions.clone(),
            script,
            gap,
        });
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(service),
                    )
                    .await;
                });
            }
        });
        (format!("http://{address}"), subscriptions, server)
    }
}

/// A stream that fails right after it is accepted is retried with a growing backoff, not
/// every ~50 ms: over 5 s the sidecar subscribes a handful of times (backoff doubling from
/// 100 ms), where starting over after each accepted stream made it about a hundred.
#[tokio::test]
async fn a_stream_that_fails_at_once_is_retried_with_growing_backoff() {
    let too_large = tonic::Status::out_of_range("the snapshot is too large to send");
    let (url, subscriptions, server) = ScriptedControl::start(vec![Err(too_large)]).await;
    let _sidecar = Sidecar::start_push(&url, SidecarOptions::default()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let made = subscriptions.load(std::sync::atomic::Ordering::SeqCst);
    assert!(made >= 2, "it did retry: {made}");
    assert!(made <= 20, "{made} subscriptions in 5 s");
    server.abort();
}

/// Snapshots refused before they are parsed (a digest that does not match the documents,
/// `unchanged` for documents the sidecar does not have) are NACKed and recorded like any
/// refused config: the rejected counter and `/config` `last_error`.
#[tokio::test]
async fn snapshots_refused_before_parsing_are_recorded() {
    use ficus_config::wire::{control_message, ControlMessage, Snapshot};
    let snapshot = |version, unchanged| {
        Ok(ControlMessage {
            kind: Some(control_message::Kind::Snapshot(Snapshot {
                version,
                nonce: format!("n{version}"),
                documents: if unchanged {
                    String::new()
                } else {
                    "apiVersion: ficus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n".into()
                },
                digest: "not-the-digest".into(),
                unchanged,
                trust_bundle_pem: String::new(),
            })),
        })
    };
    let (url, _subscriptions, server) =
        ScriptedControl::start(vec![snapshot(1, false), snapshot(2, true)]).await;
    let sidecar = Sidecar::start_push(&url, SidecarOptions::default()).await;
    until("both refusals counted", Duration::from_secs(10), || async {
        let metrics = sidecar.metrics().await;
        metrics.sum("ficus_config_updates_total", &[("result", "rejected")]) >= 2.0
    })
    .await;
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_config_updates_total", &[("result", "rejected")]),
        2.0
    );
    let config = sidecar.config().await;
    let error = config["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("does not have"), "{config}");
    server.abort();
}

/// A whole snapshot of `documents` at `version`, as the control plane pushes it.
fn pushed(
    version: u64,
    documents: &str,
) -> Result<ficus_config::wire::ControlMessage, tonic::Status> {
    use ficus_config::wire::{control_message, ControlMessage, Snapshot};
    Ok(ControlMessage {
        kind: Some(control_message::Kind::Snapshot(Snapshot {
            version,
            nonce: format!("n{version}"),
            digest: ficus_config::wire::digest(documents),
            documents: documents.to_owned(),
            unchanged: false,
            trust_bundle_pem: String::new(),
        })),
    })
}

/// RELIABILITY CFG-1, on the sidecar: pushes with an invalid regex, a route to a Backend that
/// does not exist and a duplicate name, under load. Each is refused with the field it is about
/// (in `/config`'s `last_error`) and counted as rejected from the control plane, the data plane
/// keeps serving the last good version, and not one request fails. (`ficus-control` refuses
/// such applies itself, so a scripted control plane sends them.)
#[tokio::test]
async fn bad_pushes_are_refused_naming_the_field_while_traffic_flows() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let good = config("a", a.addr, b.addr, 1);
    let route = |rule: &str| {
        format!(
            "{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: extra, namespace: shop}}\n\
             spec:\n  parentRefs: [{{name: svc}}]\n  rules:\n  - {rule}\n",
            good
        )
    };
    let bad = [
        (
            route("matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]\n    backendRefs: [{name: b}]"),
            "spec.rules[0].matches[0].path.value",
        ),
        (
            route("backendRefs: [{name: nowhere}]"),
            "spec.rules[0].backendRefs[0].name",
        ),
        (
            format!("{good}---\napiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: a, namespace: shop}}\nspec: {{endpoints: [{{address: \"{}\"}}]}}\n", b.addr),
            "Backend shop/a",
        ),
    ];
    let mut script = vec![pushed(1, &good)];
    script.extend(
        bad.iter()
            .zip(2..)
            .map(|((documents, _), version)| pushed(version, documents)),
    );
    // The first push at once, then one bad push a second while the load runs.
    let (url, _subscriptions, server) =
        ScriptedControl::start_paced(script, Duration::from_secs(1)).await;
    let sidecar = Sidecar::start_push(&url, SidecarOptions::default()).await;
    sidecar.wait_ready(Duration::from_secs(20)).await;
    let load = Load::start([sidecar.outbound; 4], "svc", Duration::from_millis(5));
    // Each refusal is logged with its field (read from the log rather than `last_error`,
    // which the next push may already have replaced).
    for (_, field) in &bad {
        sidecar.wait_log(field, Duration::from_secs(20)).await;
    }
    let labels = [("source", "control")];
    let deadline = Duration::from_secs(20);
    let metrics = sidecar.wait_metric("ficus_config_rejected_total", &labels, 3.0, deadline);
    assert_eq!(
        metrics.await.sum("ficus_config_rejected_total", &labels),
        3.0
    );
    let config = sidecar.config().await;
    assert_eq!(
        config["version"], 1,
        "the last good version serves: {config}"
    );
    let last = config["last_error"].as_str().unwrap_or_default();
    assert!(
        last.contains(bad[2].1),
        "the last refusal in /config: {config}"
    );
    let (served, failed) = load.stop().await;
    assert_eq!(failed, 0, "no request failed while the pushes were refused");
    assert!(served > 0);
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_config_updates_total", &[("result", "rejected")]),
        3.0
    );
    assert_eq!(svc_text(&sidecar).await, "a");
    server.abort();
}

/// RELIABILITY CP-2: a control plane whose version counter went back (a store restored from
/// an older backup) is followed, since it is the source of truth, but never silently: the
/// sidecar says so in its log.
#[tokio::test]
async fn a_version_that_goes_back_is_taken_and_logged() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let script = vec![
        pushed(5, &config("a", a.addr, b.addr, 5)),
        pushed(3, &config("b", a.addr, b.addr, 3)),
    ];
    let (url, _subscriptions, server) =
        ScriptedControl::start_paced(script, Duration::from_millis(500)).await;
    let sidecar = Sidecar::start_push(&url, SidecarOptions::default()).await;
    until("version 3 served", Duration::from_secs(20), || async {
        version(&sidecar).await == 3
    })
    .await;
    assert_eq!(svc_text(&sidecar).await, "b");
    sidecar
        .wait_log("older version than the one served", Duration::from_secs(10))
        .await;
    server.abort();
}

/// A TCP relay whose connections can be frozen: from [`FreezingRelay::freeze`] on, the
/// connections open then carry nothing either way and stay open (a control plane whose host
/// went silent: no FIN, no RST). Connections opened later are relayed normally.
struct FreezingRelay {
    addr: std::net::SocketAddr,
    freeze: std::sync::Arc<tokio::sync::Notify>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingRelay {
    async fn start(to: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let freeze = std::sync::Arc::new(tokio::sync::Notify::new());
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (frozen, counted) = (freeze.clone(), connections.clone());
        let task = tokio::spawn(async move {
            // Frozen connections are kept here, open, until the relay goes.
            let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (frozen, held) = (frozen.clone(), held.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                    tokio::select! {
                        _ = relay => {}
                        () = frozen.notified() => {
                            if let Ok(mut held) = held.lock() {
                                held.push((client, server));
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            freeze,
            connections,
            task,
        }
    }

    /// Freezes every connection open now.
    fn freeze(&self) {
        self.freeze.notify_waiters();
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FreezingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// RELIABILITY promise 3, the control-plane keepalive: a control plane that stops answering
/// without closing (its host went silent) is noticed by the stream's HTTP/2 keepalive (10 s
/// PINGs, 10 s to answer) and the sidecar subscribes again, on a new connection, and so gets
/// what was applied meanwhile. Without the keepalive it would wait on the silent connection
/// forever.
#[tokio::test]
async fn a_control_plane_that_goes_silent_is_left_at_the_keepalive_timeout() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = ControlPlane::start().await;
    let relay = FreezingRelay::start(control.grpc).await;
    let url = format!("http://{}", relay.addr);
    let sidecar = Sidecar::start_push(&url, push_options("web-1")).await;
    apply(&control, &config("a", a.addr, b.addr, 1)).await;
    sidecar.wait_version(1, Duration::from_secs(20)).await;
    let before = relay.connections();

    relay.freeze();
    apply(&control, &config("b", a.addr, b.addr, 2)).await;
    // 20 s for the keepalive, then a reconnect with backoff: a minute is plenty.
    sidecar.wait_version(2, Duration::from_secs(60)).await;
    assert!(
        relay.connections() > before,
        "the version came on a new connection"
    );
    assert_eq!(svc_text(&sidecar).await, "b");
}

/// SIGHUP and SIGUSR1, sent by habit (reload, logrotate's `postrotate`), end neither
/// `ficus-control` nor a push-mode sidecar: each logs that it has nothing to do and goes on
/// serving (a push-mode sidecar has no `--config` to read again).
#[tokio::test]
async fn sighup_and_sigusr1_end_neither_the_control_plane_nor_a_push_mode_sidecar() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut control = ControlPlane::start().await;
    for (signal, name) in [("HUP", "SIGHUP ignored"), ("USR1", "SIGUSR1 ignored")] {
        control.signal(signal);
        let started = Instant::now();
        while !control.log().contains(name) {
            if let Some(status) = control.exited() {
                panic!("ficus-control exited on SIG{signal}: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "ficus-control did not log {name:?}:\n{}",
                control.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(control.exited().is_none(), "ficus-control still runs");
    apply(&control, &config("a", a.addr, b.addr, 1)).await;

    let mut sidecar = Sidecar::start_push(&control.grpc_url(), push_options("web-1")).await;
    sidecar.wait_ready(Duration::from_secs(20)).await;
    sidecar.set_log_level("info").await;
    sidecar.signal("HUP");
    sidecar
        .wait_log("SIGHUP: nothing to reload", Duration::from_secs(10))
        .await;
    sidecar.signal("USR1");
    sidecar
        .wait_log("SIGUSR1: the access log is off", Duration::from_secs(10))
        .await;
    assert!(sidecar.wait_exit_now().is_none(), "the sidecar still runs");
    assert_eq!(svc_text(&sidecar).await, "a");
    apply(&control, &config("b", a.addr, b.addr, 2)).await;
    until_svc_text(&sidecar, "b").await;
}
