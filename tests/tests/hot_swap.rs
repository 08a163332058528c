//! Config hot swap: continuous traffic across many swaps, invalid files, start-up errors.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_tests::client::{self, H1Client};
use ficus_tests::process::{run_sidecar, Sidecar};
use ficus_tests::upstream::Upstream;

fn config(version: u64, a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    let target = if version.is_multiple_of(2) { "a" } else { "b" };
    let filters = format!(
        "    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: \
         {{set: [{{name: x-version, value: \"{version}\"}}]}}}}]\n"
    );
    ficus_tests::svc_config(a, b, target, &filters)
}

#[tokio::test]
async fn hundred_swaps_under_continuous_traffic_fail_nothing() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let sidecar = Sidecar::start(&config(0, a.addr, b.addr)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let outbound = sidecar.outbound;
        clients.push(tokio::spawn(async move {
            let mut client = H1Client::connect(outbound).await.unwrap();
            // Bounded: stops on the flag, and in any case after 200k requests.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.get("svc", "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let mut checker = H1Client::connect(sidecar.outbound).await.unwrap();
    for version in 1..=100u64 {
        sidecar.write_config(&config(version, a.addr, b.addr));
        let started = Instant::now();
        loop {
            let response = checker.get("svc", "/").await.unwrap();
            if response.header("x-version") == version.to_string() {
                let want = if version % 2 == 0 { "a" } else { "b" };
                assert_eq!(
                    response.text(),
                    want,
                    "version {version} routes to its backend"
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "swap {version} never became visible"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during swaps"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "traffic kept flowing");
    let config = sidecar.config().await;
    assert_eq!(config["version"], 101);
    assert!(config["last_error"].is_null());
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_config_updates_total", &[("result", "accepted")]),
        101.0
    );
    assert_eq!(metrics.sum("ficus_config_version", &[]), 101.0);
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_config_serving() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let sidecar = Sidecar::start(&config(0, a.addr, b.addr)).await;
    let bad =
        config(1, a.addr, b.addr).replace("parentRefs:", "parentRefz: [{name: x}]\n  parentRefs:");
    sidecar.write_config(&bad);
    let started = Instant::now();
    let status = loop {
        let status = sidecar.config().await;
        if !status["last_error"].is_null() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "rejection never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("config.yaml"), "names the file: {error}");
    assert!(
        error.contains("HTTPRoute shop/svc"),
        "names the document: {error}"
    );
    assert!(error.contains("parentRefz"), "names the field: {error}");
    assert_eq!(status["version"], 1, "old config still in force");
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "a"));
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_config_updates_total", &[("result", "rejected")]),
        1.0
    );

    // Empty and truncated files are rejected the same way: counted, and named in `/config`.
    for (rejected, text) in [
        (2.0, ""),
        (
            3.0,
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: a",
        ),
    ] {
        sidecar.write_config(text);
        let labels = [("result", "rejected")];
        let deadline = Duration::from_secs(10);
        let metrics =
            sidecar.wait_metric("ficus_config_updates_total", &labels, rejected, deadline);
        assert_eq!(
            metrics.await.sum("ficus_config_updates_total", &labels),
            rejected
        );
        let error = sidecar.config().await["last_error"].to_string();
        assert!(error.contains(".yaml"), "{text:?}: {error}");
    }
    assert_eq!(
        client::get(sidecar.outbound, "svc", "/")
            .await
            .unwrap()
            .status,
        200
    );

    // Putting back the file that serves clears the error too (nothing is swapped).
    sidecar.write_config(&config(0, a.addr, b.addr));
    let started = Instant::now();
    while !sidecar.config().await["last_error"].is_null() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the revert never cleared the error"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sidecar.config().await["version"], 1);

    // A new good file is swapped in.
    sidecar.write_config(&config(2, a.addr, b.addr));
    sidecar.wait_version(2, Duration::from_secs(10)).await;
    assert!(sidecar.config().await["last_error"].is_null());
}

#[tokio::test]
async fn a_listen_address_in_use_rejects_the_reload() {
    let a = Upstream::start("a").await;
    let sidecar = Sidecar::start(&config(0, a.addr, a.addr)).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = format!(
        "---\napiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: db, namespace: shop}}\n\
         spec: {{protocol: tcp, listen: \"{}\", endpoints: [{{address: \"127.0.0.1:5432\"}}]}}\n",
        taken.local_addr().unwrap()
    );
    sidecar.write_config(&(config(1, a.addr, a.addr) + &tcp));
    let started = Instant::now();
    let error = loop {
        if let Some(error) = sidecar.config().await["last_error"].as_str() {
            break error.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "rejection never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("cannot listen"), "{error}");
    assert_eq!(sidecar.config().await["version"], 1);
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!(response.header("x-version"), "0");

    // Once the address is free the same file is tried again, without being touched.
    drop(taken);
    sidecar.wait_version(2, Duration::from_secs(15)).await;
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!(response.header("x-version"), "1");
}

/// Waits (bounded) until `/config` reports a rejection that mentions `needle`; the error.
async fn wait_rejection(sidecar: &Sidecar, needle: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(error) = sidecar.config().await["last_error"].as_str() {
            if error.contains(needle) {
                return error.to_owned();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no rejection mentioning {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small file must not make every sidecar hold a huge route table, nor a huge error: a route
/// naming 300 services with 300 matches (90,000 table entries) is refused by Gateway API's
/// caps, and a file with 2,000 mistakes gets the first 100 and a count of the rest. The last
/// good config serves meanwhile.
#[tokio::test]
async fn huge_routes_and_huge_error_lists_are_refused_in_bounds() {
    let a = Upstream::start("a").await;
    let sidecar = Sidecar::start(&config(0, a.addr, a.addr)).await;
    let backend = format!(
        "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {{name: a, namespace: shop}}\n\
         spec: {{endpoints: [{{address: \"{}\"}}]}}\n",
        a.addr
    );
    let list =
        |n: usize, item: &dyn Fn(usize) -> String| (0..n).map(item).collect::<Vec<_>>().join(", ");
    let wide = format!(
        "{backend}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: wide, namespace: shop}}\n\
         spec:\n  parentRefs: [{}]\n  rules: [{{matches: [{}], backendRefs: [{{name: a}}]}}]\n",
        list(300, &|i| format!("{{name: s{i}}}")),
        list(300, &|i| format!("{{path: {{value: /p{i}}}}}")),
    );
    sidecar.write_config(&wide);
    let error = wait_rejection(&sidecar, "at most 32 are allowed").await;
    assert!(
        error.contains("HTTPRoute shop/wide: spec.parentRefs: 300 entries"),
        "{error}"
    );
    assert!(
        error.contains("spec.rules: 300 matches in the route's rules together; at most 128"),
        "{error}"
    );

    // 125 routes, each with 16 backendRefs naming Backends that do not exist.
    let routes: Vec<String> = (0..125)
        .map(|r| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: r{r}, namespace: shop}}\n\
                 spec:\n  parentRefs: [{{name: svc}}]\n  rules: [{{backendRefs: [{}]}}]\n",
                list(16, &|i| format!("{{name: gone-{r}-{i}}}"))
            )
        })
        .collect();
    sidecar.write_config(&format!("{backend}---\n{}", routes.join("---\n")));
    let error = wait_rejection(&sidecar, "more problems not listed").await;
    assert!(
        error.contains("1900 more problems not listed (only the first 100 are)"),
        "{error}"
    );
    assert_eq!(error.matches("does not exist").count(), 100, "{error}");
    assert!(error.len() < 64 * 1024, "{} bytes", error.len());

    assert_eq!(sidecar.config().await["version"], 1, "old config in force");
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "a"));
    let metrics = sidecar.metrics().await;
    assert_eq!(
        metrics.sum("ficus_config_updates_total", &[("result", "rejected")]),
        2.0
    );
}

/// Runs a sidecar on the config `file` until it exits (it is expected to refuse to start).
async fn start_on_file(file: &std::path::Path) -> (std::process::ExitStatus, String) {
    let port = || ficus_tests::free_addr().to_string();
    let (outbound, inbound, admin) = (port(), port(), port());
    let file = file.to_str().unwrap();
    let args = [
        "--config",
        file,
        "--outbound",
        &outbound,
        "--inbound",
        &inbound,
        "--admin",
        &admin,
    ];
    run_sidecar(&args).await
}

#[tokio::test]
async fn invalid_config_at_start_exits_2_naming_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\n\
         spec:\n  parentRefs: [{name: svc}]\n  rules: [{backendRefs: [{name: missing}], timeouts: {request: 2 seconds}}]\n",
    )
    .unwrap();
    let (status, stderr) = start_on_file(&path).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(stderr.contains("HTTPRoute shop/r"), "{stderr}");
    assert!(
        stderr.contains("spec.rules[0].backendRefs[0].name"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.rules[0].timeouts.request"),
        "all errors, not just the first: {stderr}"
    );

    let missing = dir.path().join("nope.yaml");
    let (status, stderr) = start_on_file(&missing).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nope.yaml"), "{stderr}");

    // RELIABILITY CFG-3: an empty file and an unknown field stop the start too. (An unreadable
    // file cannot be made here: the tests run as root, who reads any mode.)
    for (name, text, names) in [
        ("empty.yaml", "", "empty.yaml"),
        (
            "unknown.yaml",
            "apiVersion: ficus.dev/v1alpha1\nkind: Backend\nmetadata: {name: b, namespace: shop}\n\
             spec: {endpoints: [{address: \"127.0.0.1:9\"}], colour: blue}\n",
            "spec.colour",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let (status, stderr) = start_on_file(&file).await;
        assert_eq!(status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
        assert!(stderr.contains(names), "{name}: {stderr}");
    }

    let (status, _) = run_sidecar(&["--outbound", "not-an-address"]).await;
    assert_eq!(status.code(), Some(2), "bad flags exit 2");
    // Names the control plane would refuse in every Hello are bad flags too.
    let long = "a".repeat(300);
    for (flag, value) in [("--node-id", long.as_str()), ("--workload", "")] {
        let (status, stderr) = run_sidecar(&["--control", "http://127.0.0.1:9", flag, value]).await;
        assert_eq!(status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
}

/// Asks through the sidecar until the route answers with `x-version: version` (bounded).
async fn wait_route_version(sidecar: &Sidecar, version: u64) {
    let mut checker = H1Client::connect(sidecar.outbound).await.unwrap();
    let started = Instant::now();
    loop {
        let response = checker.get("svc", "/").await.unwrap();
        if response.header("x-version") == version.to_string() {
            let want = if version.is_multiple_of(2) { "a" } else { "b" };
            assert_eq!(
                response.text(),
                want,
                "version {version} routes to its backend"
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "version {version} never became visible"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn rename_replace_and_in_place_writes_are_picked_up() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let sidecar = Sidecar::start(&config(0, a.addr, b.addr)).await;
    // Editor / `mv` style: write a temp file, rename it over the config.
    sidecar.write_config(&config(1, a.addr, b.addr));
    wait_route_version(&sidecar, 1).await;
    // In place (truncate and write, same inode).
    std::fs::write(&sidecar.config_path, config(2, a.addr, b.addr)).unwrap();
    wait_route_version(&sidecar, 2).await;
    let status = sidecar.config().await;
    assert_eq!(status["version"], 3);
    assert!(status["last_error"].is_null());
}

#[tokio::test]
async fn a_configmap_style_data_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let sidecar = Sidecar::start(&config(0, a.addr, b.addr)).await;
    let dir = sidecar.config_path.parent().unwrap().to_path_buf();
    // The kubelet's layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>/.
    let swap_data = |version: u64| {
        let target = format!("..2026_11_25_v{version}");
        std::fs::create_dir(dir.join(&target)).unwrap();
        std::fs::write(
            dir.join(&target).join("config.yaml"),
            config(version, a.addr, b.addr),
        )
        .unwrap();
        symlink(&target, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        if version > 1 {
            std::fs::remove_dir_all(dir.join(format!("..2026_11_25_v{}", version - 1))).unwrap();
        }
    };
    swap_data(1);
    symlink("..data/config.yaml", dir.join("config.yaml.link")).unwrap();
    std::fs::rename(dir.join("config.yaml.link"), &sidecar.config_path).unwrap();
    wait_route_version(&sidecar, 1).await;
    // A ConfigMap update: only `..data` changes; config.yaml stays the same symlink.
    for version in 2..=4 {
        swap_data(version);
        wait_route_version(&sidecar, version).await;
    }
    let status = sidecar.config().await;
    assert_eq!(status["version"], 5, "one reload per swap");
    assert!(status["last_error"].is_null());
}

/// Writes `text` over the config file in place, keeping its size, inode and modification
/// time: a change the watcher's metadata comparison cannot see (inotify wakes it, for the
/// `utimes` and the close, and it finds the file as it was).
fn rewrite_unseen(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(before.len(), text.len() as u64, "the same size");
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
}

/// Polls `/config` until its version is `version`; panics if the sidecar exits meanwhile.
async fn wait_alive_at_version(sidecar: &mut Sidecar, version: u64, after: &str) {
    let started = Instant::now();
    loop {
        if let Some(status) = sidecar.wait_exit_now() {
            panic!("the sidecar exited on {after}: {status}");
        }
        if let Ok(response) = client::get(sidecar.admin, "admin", "/config").await {
            let status: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            if status["version"] == version {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "version {version} not reached after {after}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kill -HUP`: the config file is read at once, changed or not as far as its metadata says,
/// and swapped in or rejected exactly as a change the watcher saw; the process goes on
/// serving.
#[tokio::test]
async fn sighup_reads_the_config_again_even_when_its_metadata_did_not_change() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut sidecar = Sidecar::start(&config(0, a.addr, b.addr)).await;
    rewrite_unseen(&sidecar.config_path, &config(1, a.addr, b.addr));
    // Past the watcher's fallback poll (1 s) and its inotify wake-up: it did not see the
    // change, so what applies it below is the SIGHUP.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        sidecar.config().await["version"],
        1,
        "the watcher did not see the change"
    );
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!(response.header("x-version"), "0");

    sidecar.signal("HUP");
    wait_alive_at_version(&mut sidecar, 2, "SIGHUP").await;
    wait_route_version(&sidecar, 1).await;
    let metrics = sidecar.metrics().await;
    let accepted = [("result", "accepted")];
    assert_eq!(metrics.sum("ficus_config_updates_total", &accepted), 2.0);

    // An invalid file read on SIGHUP is rejected as a changed file would be.
    let bad =
        config(3, a.addr, b.addr).replace("parentRefs: [{name: svc}]", "parentRefz: [{name: svc}]");
    rewrite_unseen(&sidecar.config_path, &bad);
    sidecar.signal("HUP");
    let labels = [("result", "rejected")];
    let deadline = Duration::from_secs(10);
    let metrics = sidecar.wait_metric("ficus_config_updates_total", &labels, 1.0, deadline);
    assert_eq!(
        metrics.await.sum("ficus_config_updates_total", &labels),
        1.0
    );
    let status = sidecar.config().await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("parentRefz"), "names the field: {error}");
    assert_eq!(status["version"], 2, "the last good config serves");
    let response = client::get(sidecar.outbound, "svc", "/").await.unwrap();
    assert_eq!((response.status, response.header("x-version")), (200, "1"));

    // SIGHUP with the serving file back: nothing to swap, the error is cleared.
    rewrite_unseen(&sidecar.config_path, &config(1, a.addr, b.addr));
    sidecar.signal("HUP");
    let started = Instant::now();
    while !sidecar.config().await["last_error"].is_null() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the SIGHUP never cleared the error"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sidecar.config().await["version"], 2);
    assert!(sidecar.wait_exit_now().is_none(), "still running");
}
