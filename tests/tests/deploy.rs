//! deploy/: every manifest validates against the Kubernetes schemas (with the Python
//! `kubernetes-validate`, which `scripts/install-test-deps` installs into
//! /opt/ficus-test-venv; the test skips with a message without it), the kustomization builds
//! (`kubectl kustomize`, when kubectl exists), `bootstrap-ca` prints valid manifests, and each
//! Dockerfile copies the whole workspace.
//!
//! No API server runs here: `kubectl apply --dry-run=client` needs one for discovery, so it is
//! not run. The Ficus custom resources of deploy/examples/mesh.yaml are checked against the
//! generated CRD schemas by ficus-control's `kubernetes::crd` tests instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ficus_tests::control::{ficusctl, output_within};
use ficus_tests::process::binary;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubernetes-validate` from $FICUS_KUBERNETES_VALIDATE, PATH or /opt/ficus-test-venv.
fn kubernetes_validate() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("FICUS_KUBERNETES_VALIDATE").map(PathBuf::from),
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("kubernetes-validate"))
                .find(|p| p.is_file())
        }),
        Some(PathBuf::from(
            "/opt/ficus-test-venv/bin/kubernetes-validate",
        )),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// Runs `program args` with `stdin`, at most 120 s; (exit code, stdout, stderr).
async fn run(program: &Path, args: &[&str], stdin: Option<String>) -> (i32, String, String) {
    let mut command = Command::new(program);
    command.args(args).current_dir(repo());
    let output = output_within(
        command,
        stdin,
        Duration::from_secs(120),
        &format!("{} {args:?}", program.display()),
    )
    .await;
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Validates `text` (a YAML stream named `what`) strictly: unknown fields are errors.
async fn validate(validator: &Path, what: &str, text: String) {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), &text).unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let (code, stdout, stderr) = run(validator, &["--strict", &path], None).await;
    assert_eq!(code, 0, "{what} does not validate:\n{stdout}\n{stderr}");
    assert!(
        !stdout.contains("Couldn't find schema") && !stderr.contains("Couldn't find schema"),
        "{what}: a kind without a schema slipped in:\n{stdout}{stderr}"
    );
    let documents = text
        .split("\n---")
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .count();
    assert_eq!(
        stdout.matches(" passed for resource ").count(),
        documents,
        "{what}: every document is checked:\n{stdout}"
    );
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const MANIFESTS: &[&str] = &[
    "deploy/control-plane/namespace.yaml",
    "deploy/control-plane/rbac.yaml",
    "deploy/control-plane/control.yaml",
    "deploy/control-plane/webhook.yaml",
    "deploy/crds/meshes.yaml",
    "deploy/crds/backends.yaml",
    "deploy/crds/trafficpolicies.yaml",
    "deploy/crds/authorizationpolicies.yaml",
    "deploy/examples/shop.yaml",
];

#[tokio::test]
async fn deploy_manifests_validate_against_the_kubernetes_schemas() {
    let Some(validator) = kubernetes_validate() else {
        eprintln!(
            "SKIPPED: kubernetes-validate not found (run scripts/install-test-deps, or set \
             FICUS_KUBERNETES_VALIDATE)"
        );
        return;
    };
    for path in MANIFESTS {
        validate(&validator, path, read(path)).await;
    }
}

#[tokio::test]
async fn injected_manifests_validate_against_the_kubernetes_schemas() {
    let Some(validator) = kubernetes_validate() else {
        eprintln!("SKIPPED: kubernetes-validate not found (run scripts/install-test-deps)");
        return;
    };
    for path in [
        "deploy/examples/shop.yaml",
        "tests/fixtures/k8s/workloads.yaml",
    ] {
        let out = ficusctl(
            "http://127.0.0.1:9",
            &["inject", "-f", "-"],
            Some(&read(path)),
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("ficus-sidecar"), "{path} was injected");
        validate(
            &validator,
            &format!("ficusctl inject -f {path}"),
            out.stdout,
        )
        .await;
    }
}

#[tokio::test]
async fn bootstrap_ca_prints_valid_manifests_with_the_generated_root() {
    let script = repo().join("deploy/bootstrap-ca");
    // The script looks for ficus-control on PATH first: point it at this build.
    let path = format!(
        "{}:{}",
        binary("ficus-control").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(script)
            .args(["--print", "shop"])
            .env("PATH", path)
            .output()
    })
    .await
    .unwrap()
    .expect("run bootstrap-ca");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("name: ficus-ca\n  namespace: ficus-system"));
    assert!(
        stdout.contains("  key.pem: LS0tLS1CRUdJTi"),
        "base64 of a PEM key"
    );
    assert_eq!(
        stdout.matches("name: ficus-root-ca").count(),
        2,
        "ficus-system and shop"
    );
    assert!(stdout.contains("  ca.pem: |\n    -----BEGIN CERTIFICATE-----"));
    match kubernetes_validate() {
        Some(validator) => validate(&validator, "bootstrap-ca --print", stdout).await,
        None => eprintln!("SKIPPED validation: kubernetes-validate not found"),
    }
}

/// Run again (say, to add a namespace) against a cluster that has a CA, `bootstrap-ca` keeps
/// it: the Secret is not written, and the new ConfigMap and the webhook's caBundle carry the
/// cluster's root. Before, every run made a new root and overwrote the Secret and caBundle,
/// so the webhook's certificate (from the old root) no longer matched and the namespaces not
/// named in that run kept the old root. `kubectl` is a stand-in that serves the existing
/// Secret and records what is applied and patched (no API server runs here).
#[tokio::test]
async fn bootstrap_ca_run_again_keeps_the_clusters_ca() {
    let script = repo().join("deploy/bootstrap-ca");
    let bin = binary("ficus-control")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let run_script = |args: Vec<&'static str>, path: String, log: Option<std::path::PathBuf>| {
        let script = script.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut command = Command::new(script);
                command.args(args).env("PATH", path);
                if let Some(log) = log {
                    command.env("FAKE_KUBECTL_LOG", log);
                }
                command.output()
            })
            .await
            .unwrap()
            .expect("run bootstrap-ca")
        }
    };
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    // The cluster's CA: what a first run made.
    let first = run_script(vec!["--print", "shop"], path.clone(), None).await;
    assert!(first.status.success());
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    let field = |name: &str| {
        first
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap()
            .to_owned()
    };
    let (cert, key) = (field("cert.pem"), field("key.pem"));
    let root_of = |manifests: &str| {
        manifests
            .split("  ca.pem: |\n")
            .nth(1)
            .unwrap()
            .split("\n---")
            .next()
            .unwrap()
            .to_owned()
    };
    let root = root_of(&first);
    // A root rotation in progress: the Secret also holds the new root as extra-roots.pem.
    let other = run_script(vec!["--print"], path.clone(), None).await;
    let new_root = root_of(&String::from_utf8_lossy(&other.stdout));
    let new_root_pem: String = new_root
        .lines()
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let extra = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &new_root_pem);

    let fake = tempfile::tempdir().unwrap();
    let log = fake.path().join("log");
    std::fs::create_dir(&log).unwrap();
    let kubectl = fake.path().join("kubectl");
    std::fs::write(
        &kubectl,
        format!(
            "#!/usr/bin/env bash\n\
             echo \"$*\" >> \"$FAKE_KUBECTL_LOG/calls\"\n\
             case \"$*\" in\n\
             *'jsonpath={{.data.cert\\.pem}}'*) printf %s '{cert}' ;;\n\
             *'jsonpath={{.data.key\\.pem}}'*) printf %s '{key}' ;;\n\
             *'jsonpath={{.data.extra-roots\\.pem}}'*) printf %s '{extra}' ;;\n\
             *'get secret ficus-join-tokens'*) exit 1 ;;\n\
             *'create secret generic ficus-join-tokens'*) exit 0 ;;\n\
             *'get secret'*) exit 0 ;;\n\
             'get namespace blog') exit 1 ;;\n\
             'create namespace blog') exit 0 ;;\n\
             'apply -f -') cat > \"$FAKE_KUBECTL_LOG/applied\" ;;\n\
             patch*) echo \"$*\" > \"$FAKE_KUBECTL_LOG/patched\" ;;\n\
             *) exit 1 ;;\n\
             esac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &kubectl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{path}", fake.path().display());
    let again = run_script(vec!["blog"], path, Some(log.clone())).await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let calls = std::fs::read_to_string(log.join("calls")).unwrap();
    assert!(calls.contains("create namespace blog"), "{calls}");
    // The join-token Secret the Deployment mounts is made when missing (else ficus-control
    // could not start: --join-token-file would name no file).
    assert!(
        calls.contains("create secret generic ficus-join-tokens"),
        "{calls}"
    );
    let applied = std::fs::read_to_string(log.join("applied")).unwrap();
    assert!(!applied.contains("kind: Secret"), "{applied}");
    assert!(applied.contains("namespace: blog"), "{applied}");
    assert!(applied.contains(&root), "the cluster's root: {applied}");
    assert!(
        applied.contains(&new_root),
        "and the new root of the rotation: {applied}"
    );
    let patched = std::fs::read_to_string(log.join("patched")).unwrap();
    let root_pem: String = root.lines().map(|l| format!("{}\n", l.trim())).collect();
    assert!(
        patched.contains(&base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{root_pem}{new_root_pem}")
        )),
        "caBundle is the cluster's root and the new one: {patched}"
    );
}

#[tokio::test]
async fn the_kustomization_builds_with_kubectl() {
    let Some(kubectl) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
    }) else {
        eprintln!("SKIPPED: kubectl not found");
        return;
    };
    let (code, stdout, stderr) = run(&kubectl, &["kustomize", "deploy"], None).await;
    assert_eq!(code, 0, "{stderr}");
    for kind in [
        "kind: Namespace",
        "kind: CustomResourceDefinition",
        "kind: ClusterRole\n",
        "kind: Deployment",
        "kind: MutatingWebhookConfiguration",
    ] {
        assert!(stdout.contains(kind), "{kind} missing");
    }
    assert_eq!(stdout.matches("kind: CustomResourceDefinition").count(), 4);
    eprintln!(
        "note: kubectl apply --dry-run=client is not run: it needs an API server for \
         discovery, and none runs here"
    );
    if let Some(validator) = kubernetes_validate() {
        validate(&validator, "kubectl kustomize deploy", stdout).await;
    }
}

/// Injection fails closed (a pod of a mesh namespace waits while the control plane cannot be
/// reached, rather than start without its sidecar, outside mTLS and its policies), and can
/// never block the control plane's own namespace, which carries no injection label. The gRPC
/// port is TLS, so it is not declared as cleartext HTTP/2.
#[test]
fn the_injector_fails_closed_but_never_for_the_control_planes_namespace() {
    let webhook = read("deploy/control-plane/webhook.yaml");
    assert!(webhook.contains("failurePolicy: Fail"), "{webhook}");
    assert!(
        webhook.contains("      ficus.dev/inject: enabled"),
        "{webhook}"
    );
    let namespace = read("deploy/control-plane/namespace.yaml");
    assert!(namespace.contains("name: ficus-system"));
    assert!(!namespace.contains("ficus.dev/inject:"), "{namespace}");
    let control = read("deploy/control-plane/control.yaml");
    assert!(
        !control.contains("kubernetes.io/h2c"),
        "port 15012 speaks TLS"
    );
}

/// `scripts/cpu-level` names x86-64-v3 only for a CPU with every feature of that level (the
/// sidecar image's entrypoint runs the v3 build on it), and `generic` otherwise.
#[test]
fn the_cpu_level_needs_every_v3_feature() {
    let dir = tempfile::tempdir().unwrap();
    let level = |flags: &str| {
        let path = dir.path().join("cpuinfo");
        std::fs::write(&path, format!("processor\t: 0\nflags\t\t: {flags}\n")).unwrap();
        let output = std::process::Command::new(repo().join("scripts/cpu-level"))
            .arg(&path)
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let v3 = "fpu sse4_2 popcnt avx avx2 bmi1 bmi2 f16c fma abm movbe xsave";
    assert_eq!(level(v3), "x86-64-v3");
    assert_eq!(level(&v3.replace(" avx2", "")), "generic");
    assert_eq!(level(&v3.replace(" movbe", "")), "generic");
    // `avx` alone is not `avx2`: whole words only.
    assert_eq!(
        level("avx avx512f bmi1 bmi2 f16c fma abm movbe xsave"),
        "generic"
    );
    assert_eq!(level(""), "generic");
}

#[test]
fn every_dockerfile_copies_the_whole_workspace() {
    let manifest = read("Cargo.toml");
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(members.len() >= 4, "{members:?}");
    for binary in ["ficus-sidecar", "ficus-control", "ficusctl"] {
        let dockerfile = read(&format!("deploy/docker/{binary}.Dockerfile"));
        for member in &members {
            assert!(
                dockerfile.contains(&format!("COPY {member} {member}")),
                "{binary}.Dockerfile must copy workspace member {member}"
            );
        }
        if binary == "ficus-sidecar" {
            // The profile-guided build: the image runs the script that builds it.
            assert!(
                dockerfile.contains("COPY scripts/build-pgo scripts/cpu-level scripts/")
                    && dockerfile.contains("scripts/build-pgo \\")
                    && dockerfile.contains("cp target/pgo/ficus-sidecar "),
                "{binary}.Dockerfile must build with scripts/build-pgo"
            );
            // Both builds, and the entrypoint that picks one per node.
            for needed in [
                "FICUS_PGO_TARGET_CPU=generic",
                "FICUS_PGO_TARGET_CPU=x86-64-v3",
                "/out/ficus-sidecar-generic",
                "/out/ficus-sidecar-x86-64-v3",
                "COPY scripts/cpu-level /usr/local/lib/ficus/cpu-level",
                "COPY deploy/docker/ficus-sidecar-select /usr/local/bin/ficus-sidecar",
            ] {
                assert!(dockerfile.contains(needed), "{binary}.Dockerfile: {needed}");
            }
            let select = read("deploy/docker/ficus-sidecar-select");
            assert!(select.contains("ficus-sidecar-$level") && select.contains("exec"));
            assert!(read("scripts/build-pgo").contains("--bin ficus-sidecar"));
        } else {
            assert!(dockerfile.contains(&format!("--bin {binary}")), "{binary}");
        }
        assert!(
            dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM "))
                >= 2,
            "{binary}: multi-stage"
        );
        assert!(dockerfile.contains("\nUSER "), "{binary}: not root");
    }
}

#[tokio::test]
async fn kubernetes_flags_outside_a_pod_are_usage_errors() {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        eprintln!("SKIPPED: running inside a Kubernetes pod");
        return;
    }
    if std::env::var_os("KUBECONFIG").is_some() {
        eprintln!("SKIPPED: KUBECONFIG is set (ficus-control would use it)");
        return;
    }
    for flag in ["--kubernetes-token-review", "--kubernetes"] {
        let data = tempfile::tempdir().unwrap();
        let (status, stderr) = ficus_tests::control::run_control(&[
            "--data",
            data.path().to_str().unwrap(),
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            flag,
        ])
        .await;
        assert_eq!(status.code(), Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag}: KUBERNETES_SERVICE_HOST is not set")),
            "{stderr}"
        );
    }
}
