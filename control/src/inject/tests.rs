use serde_json::{json, Value};

use super::*;

fn deployment(annotations: Value, pod_spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    })
}

fn web_spec() -> Value {
    json!({
        "serviceAccountName": "web",
        "initContainers": [{"name": "migrate", "image": "web:1", "args": ["migrate"]}],
        "containers": [{
            "name": "web",
            "image": "web:1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": 8081}},
        }],
        "volumes": [{"name": "data", "emptyDir": {}}],
    })
}

fn injected(mut object: Value) -> (Value, Outcome) {
    let outcome = inject(&mut object, &InjectConfig::default()).unwrap();
    (object, outcome)
}

fn init_container<'a>(object: &'a Value, pod: &str, name: &str) -> &'a Value {
    object
        .pointer(&format!("{pod}/spec/initContainers"))
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no init container {name} in {object}"))
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

fn flag<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    let list = container["args"].as_array().unwrap();
    let at = list.iter().position(|a| a == name)?;
    list.get(at + 1).and_then(Value::as_str)
}

#[test]
fn a_deployment_gets_the_redirect_init_container_and_a_native_sidecar() {
    let (object, outcome) = injected(deployment(json!({}), web_spec()));
    assert!(
        matches!(outcome, Outcome::Injected { pods: 1, .. }),
        "{outcome:?}"
    );
    let names: Vec<&str> = object["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [INIT_NAME, SIDECAR_NAME, "migrate"],
        "redirect first, then the proxy, then the app's own init containers"
    );

    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(args(init)[0], "redirect");
    assert_eq!(flag(init, "--proxy-uid"), Some("1337"));
    let security = &init["securityContext"];
    assert_eq!(
        security["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);

    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    assert_eq!(sidecar["restartPolicy"], "Always", "native sidecar");
    let security = &sidecar["securityContext"];
    assert_eq!(security["runAsUser"], 1337);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"], json!({"drop": ["ALL"]}));
    assert!(sidecar["resources"]["requests"]["cpu"].is_string());
    assert!(sidecar["resources"]["requests"]["memory"].is_string());
    assert_eq!(
        sidecar["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 15000})
    );
    assert!(args(sidecar).contains(&"--transparent"));
    assert_eq!(
        flag(sidecar, "--control"),
        Some("https://ficus-control.ficus-system.svc:15012")
    );
    assert_eq!(
        flag(sidecar, "--token-file"),
        Some("/var/run/secrets/ficus.dev/token/token")
    );
    assert_eq!(
        flag(sidecar, "--ca-file"),
        Some("/var/run/secrets/ficus.dev/ca/ca.pem")
    );
    assert_eq!(flag(sidecar, "--workload"), Some("$(POD_SERVICE_ACCOUNT)"));
    assert_eq!(flag(sidecar, "--namespace"), Some("$(POD_NAMESPACE)"));
    let env = sidecar["env"].as_array().unwrap();
    let field = |name: &str| {
        env.iter().find(|e| e["name"] == name).unwrap()["valueFrom"]["fieldRef"]["fieldPath"]
            .clone()
    };
    assert_eq!(field("POD_SERVICE_ACCOUNT"), "spec.serviceAccountName");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");

    let volumes = object["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert_eq!(volumes[0]["name"], "data", "the app's volumes stay first");
    let token = volumes.iter().find(|v| v["name"] == "ficus-token").unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "ficus"
    );
    let ca = volumes.iter().find(|v| v["name"] == "ficus-ca").unwrap();
    assert_eq!(ca["configMap"]["name"], "ficus-root-ca");
    // Room for the largest snapshot the control plane sends (16 MiB), stored JSON-escaped.
    let cache = volumes.iter().find(|v| v["name"] == "ficus-cache").unwrap();
    assert_eq!(cache["emptyDir"]["sizeLimit"], "64Mi");
    for mount in sidecar["volumeMounts"].as_array().unwrap() {
        assert!(
            volumes.iter().any(|v| v["name"] == mount["name"]),
            "mount {mount} has a volume"
        );
    }
    let mut app = web_spec()["containers"][0].clone();
    let rewritten = &object["spec"]["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        app[probe] = rewritten[probe].clone();
    }
    assert_eq!(
        object["spec"]["template"]["spec"]["containers"],
        json!([app]),
        "the app containers are not touched but for their probes"
    );
}

#[test]
fn probes_go_to_the_sidecar_and_their_ports_stay_in_the_mesh() {
    let (object, outcome) = injected(deployment(
        json!({"ficus.dev/exclude-inbound-ports": "9090"}),
        web_spec(),
    ));
    let Outcome::Injected { warnings, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(warnings.is_empty(), "{warnings:?}");
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(
        flag(init, "--exclude-inbound-ports"),
        Some("9090,15000"),
        "the serving port 8080 and the probed 8081 stay redirected"
    );
    let web = &object["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15000, "scheme": "HTTP"}})
    );
    assert_eq!(
        web["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/web/livez", "port": 15000, "scheme": "HTTP"}})
    );
    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    let env = sidecar["env"].as_array().unwrap();
    let probes = env
        .iter()
        .find(|e| e["name"] == "FICUS_APP_PROBES")
        .expect("the original probes go to the sidecar");
    let probes: Value = serde_json::from_str(probes["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        probes,
        json!({
            "/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": 8080,
                "scheme": "HTTP"}},
            "/app-health/web/livez": {"tcpSocket": {"port": 8081}},
        }),
        "the named port resolved"
    );
}

#[test]
fn without_probes_the_sidecar_gets_no_probe_list() {
    let spec = json!({"containers": [{"name": "app", "image": "a",
        "readinessProbe": {"exec": {"command": ["true"]}}}]});
    let (object, _) = injected(deployment(json!({}), spec));
    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    assert!(
        !sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "FICUS_APP_PROBES"),
        "{sidecar}"
    );
}

#[test]
fn without_the_rewrite_probe_ports_and_the_admin_port_are_excluded_from_inbound_redirection() {
    let (object, outcome) = injected(deployment(
        json!({"ficus.dev/exclude-inbound-ports": "9090",
               "ficus.dev/rewrite-app-probes": "false"}),
        web_spec(),
    ));
    assert_eq!(
        object["spec"]["template"]["spec"]["containers"],
        web_spec()["containers"],
        "the probes are left alone"
    );
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(
        flag(init, "--exclude-inbound-ports"),
        Some("8080,8081,9090,15000"),
        "named probe port http → 8080, tcpSocket 8081, the annotation's 9090, admin 15000"
    );
    let Outcome::Injected { warnings, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("port 8080") && warnings[0].contains("bypasses the sidecar"),
        "a declared serving port that bypasses the mesh is reported: {warnings:?}"
    );
}

#[test]
fn an_unknown_named_probe_port_is_a_warning() {
    let spec = json!({"containers": [{"name": "app", "image": "a",
        "readinessProbe": {"httpGet": {"path": "/", "port": "nope"}}}]});
    let (object, outcome) = injected(deployment(json!({}), spec));
    let Outcome::Injected { warnings, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(warnings[0].contains("\"nope\""), "{warnings:?}");
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(flag(init, "--exclude-inbound-ports"), Some("15000"));
}

#[test]
fn outbound_annotations_reach_the_redirect_command() {
    let (object, _) = injected(deployment(
        json!({
            "ficus.dev/exclude-outbound-ports": "6379,5432",
            "ficus.dev/exclude-outbound-cidrs": "10.96.0.0/12,169.254.169.254",
            "ficus.dev/proxy-cpu": "250m",
            "ficus.dev/proxy-memory": "128Mi",
        }),
        web_spec(),
    ));
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(flag(init, "--exclude-outbound-ports"), Some("5432,6379"));
    assert_eq!(
        flag(init, "--exclude-cidrs"),
        Some("10.96.0.0/12,169.254.169.254/32")
    );
    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    assert_eq!(
        sidecar["resources"]["requests"],
        json!({"cpu": "250m", "memory": "128Mi"})
    );
}

#[test]
fn the_sidecar_gets_limits_from_annotations_or_defaults() {
    let (object, _) = injected(deployment(json!({}), web_spec()));
    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    assert_eq!(
        sidecar["resources"],
        json!({"requests": {"cpu": "100m", "memory": "64Mi"},
               "limits": {"cpu": "2", "memory": "1Gi"}})
    );
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(
        init["resources"]["limits"],
        json!({"cpu": "100m", "memory": "64Mi"})
    );

    let (object, _) = injected(deployment(
        json!({
            "ficus.dev/proxy-cpu": "250m",
            "ficus.dev/proxy-memory": "128Mi",
            "ficus.dev/proxy-cpu-limit": "1",
            "ficus.dev/proxy-memory-limit": "256Mi",
        }),
        web_spec(),
    ));
    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    assert_eq!(
        sidecar["resources"],
        json!({"requests": {"cpu": "250m", "memory": "128Mi"},
               "limits": {"cpu": "1", "memory": "256Mi"}})
    );
}

#[test]
fn a_limit_below_the_request_or_unparsable_is_an_error_naming_the_annotation() {
    for (annotations, name, says) in [
        (
            json!({"ficus.dev/proxy-memory": "256Mi", "ficus.dev/proxy-memory-limit": "128Mi"}),
            "ficus.dev/proxy-memory-limit",
            "is below the sidecar's request \"256Mi\" (ficus.dev/proxy-memory)",
        ),
        (
            json!({"ficus.dev/proxy-cpu-limit": "10m"}),
            "ficus.dev/proxy-cpu-limit",
            "is below the sidecar's request \"100m\" (ficus.dev/proxy-cpu)",
        ),
        (
            json!({"ficus.dev/proxy-cpu-limit": "2 cores"}),
            "ficus.dev/proxy-cpu-limit",
            "is not a resource quantity",
        ),
    ] {
        let bad = deployment(annotations, web_spec());
        let mut object = bad.clone();
        let error = inject(&mut object, &InjectConfig::default()).unwrap_err();
        let InjectError::Annotation {
            name: named,
            reason,
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(named, name);
        assert!(reason.contains(says), "{error}");
        assert_eq!(object, bad, "left unchanged");
    }
}

/// A pod whose containers (init containers too) all have limits equal to their requests is
/// Guaranteed; the sidecar and ficus-init keep it so.
#[test]
fn a_guaranteed_pod_stays_guaranteed() {
    let at_limits = |name: &str, cpu: &str, memory: &str| {
        json!({"name": name, "image": "web:1",
               "resources": {"requests": {"cpu": cpu, "memory": memory},
                             "limits": {"cpu": cpu, "memory": memory}}})
    };
    let spec = json!({
        "initContainers": [at_limits("migrate", "500m", "128Mi")],
        "containers": [
            at_limits("web", "1", "1Gi"),
            // Limits only: the API server makes the requests equal.
            {"name": "log", "image": "log:1",
             "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}}},
        ],
    });
    let (object, outcome) = injected(deployment(
        json!({"ficus.dev/proxy-cpu": "200m"}),
        spec.clone(),
    ));
    let Outcome::Injected { warnings, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(warnings.is_empty(), "{warnings:?}");
    for name in [SIDECAR_NAME, INIT_NAME] {
        let resources = &init_container(&object, "/spec/template", name)["resources"];
        assert_eq!(
            resources["requests"], resources["limits"],
            "{name}: {resources}"
        );
    }
    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    assert_eq!(
        sidecar["resources"]["limits"],
        json!({"cpu": "200m", "memory": "64Mi"})
    );

    // An explicit limit above the request wins, with a warning that the pod turns Burstable.
    let (object, outcome) = injected(deployment(
        json!({"ficus.dev/proxy-memory-limit": "1Gi"}),
        spec.clone(),
    ));
    let Outcome::Injected { warnings, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        warnings.len() == 1 && warnings[0].contains("ficus.dev/proxy-memory-limit"),
        "{warnings:?}"
    );
    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    assert_eq!(
        sidecar["resources"]["limits"],
        json!({"cpu": "100m", "memory": "1Gi"})
    );

    // One Burstable container (here an init container) and the defaults apply.
    let mut burstable = spec;
    burstable["initContainers"][0]["resources"]["limits"]["cpu"] = json!("1");
    let (object, _) = injected(deployment(json!({}), burstable));
    let sidecar = init_container(&object, "/spec/template", SIDECAR_NAME);
    assert_eq!(
        sidecar["resources"]["limits"],
        json!({"cpu": "2", "memory": "1Gi"})
    );
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(
        init["resources"]["requests"],
        json!({"cpu": "10m", "memory": "16Mi"})
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    let (once, _) = injected(deployment(json!({}), web_spec()));
    let (twice, outcome) = injected(once.clone());
    assert_eq!(outcome, Outcome::Skipped(Skip::AlreadyInjected));
    assert_eq!(once, twice);
}

#[test]
fn opted_out_host_network_and_other_kinds_pass_through_unchanged() {
    let opted_out = deployment(json!({"ficus.dev/inject": "false"}), web_spec());
    assert_eq!(
        injected(opted_out.clone()),
        (opted_out, Outcome::Skipped(Skip::OptedOut))
    );

    let mut spec = web_spec();
    spec["hostNetwork"] = json!(true);
    let host = deployment(json!({}), spec);
    assert_eq!(
        injected(host.clone()),
        (host, Outcome::Skipped(Skip::HostNetwork))
    );

    for other in [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"ports": [{"port": 80}]}}),
        json!({"apiVersion": "example.com/v1", "kind": "Deployment", "metadata": {"name": "x"},
               "spec": {"template": {"spec": {"containers": []}}}}),
        json!("just a string"),
    ] {
        assert_eq!(injected(other.clone()), (other, Outcome::NotAWorkload));
    }
}

#[test]
fn every_workload_kind_is_found() {
    let pod_template = json!({"metadata": {}, "spec": web_spec()});
    let cases = [
        ("v1", "Pod", ""),
        ("apps/v1", "StatefulSet", "/spec/template"),
        ("apps/v1", "DaemonSet", "/spec/template"),
        ("apps/v1", "ReplicaSet", "/spec/template"),
        ("batch/v1", "Job", "/spec/template"),
        ("batch/v1", "CronJob", "/spec/jobTemplate/spec/template"),
    ];
    for (api_version, kind, at) in cases {
        let mut object = json!({"apiVersion": api_version, "kind": kind,
                                "metadata": {"name": "x"}});
        if at.is_empty() {
            object["spec"] = web_spec();
        } else {
            let mut cursor = &mut object;
            for token in at.trim_start_matches('/').split('/') {
                cursor = &mut cursor[token];
            }
            *cursor = pod_template.clone();
        }
        let (object, outcome) = injected(object);
        assert!(
            matches!(outcome, Outcome::Injected { pods: 1, .. }),
            "{kind}: {outcome:?}"
        );
        init_container(&object, at, SIDECAR_NAME);
    }
}

#[test]
fn a_list_is_injected_item_by_item() {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        deployment(json!({}), web_spec()),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}},
        deployment(json!({"ficus.dev/inject": "false"}), web_spec()),
    ]});
    let (object, outcome) = injected(list.clone());
    assert!(
        matches!(outcome, Outcome::Injected { pods: 1, .. }),
        "{outcome:?}"
    );
    init_container(&object["items"][0], "/spec/template", SIDECAR_NAME);
    assert_eq!(object["items"][1], list["items"][1]);
    assert_eq!(object["items"][2], list["items"][2]);
}

#[test]
fn errors_leave_the_object_unchanged_and_say_why() {
    let bad = deployment(
        json!({"ficus.dev/exclude-outbound-ports": "db"}),
        web_spec(),
    );
    let mut object = bad.clone();
    let error = inject(&mut object, &InjectConfig::default()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("ficus.dev/exclude-outbound-ports"),
        "{error}"
    );
    assert_eq!(object, bad);

    let mut spec = web_spec();
    spec["volumes"] = json!([{"name": "ficus-token", "emptyDir": {}}]);
    let error = inject(&mut deployment(json!({}), spec), &InjectConfig::default()).unwrap_err();
    assert_eq!(
        error,
        InjectError::NameTaken {
            what: "volume",
            name: "ficus-token".into()
        }
    );

    let mut spec = web_spec();
    spec["containers"] = json!("web");
    let error = inject(&mut deployment(json!({}), spec), &InjectConfig::default()).unwrap_err();
    assert!(
        error.to_string().contains("spec.containers must be a list"),
        "{error}"
    );

    let mut missing = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}});
    let error = inject(&mut missing, &InjectConfig::default()).unwrap_err();
    assert!(error.to_string().contains("/spec/template"), "{error}");
}

#[test]
fn a_yaml_stream_round_trips_with_the_patch_equal_to_the_rewrite() {
    let text = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  \
                - {name: app, image: app}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: \
                {name: c}\ndata: {a: b}\n---\n";
    let config = InjectConfig::default();
    let out = manifest::inject_stream("t.yaml", text, &config).unwrap();
    assert_eq!(out.documents.len(), 2, "empty documents are dropped");
    assert_eq!(out.pods, 1);
    let yaml = manifest::to_yaml(&out.documents).unwrap();
    let again = manifest::inject_stream("t.yaml", &yaml, &config).unwrap();
    assert_eq!(again.pods, 0);
    assert_eq!(
        manifest::to_yaml(&again.documents).unwrap(),
        yaml,
        "idempotent text"
    );

    let pod: Value = yaml_serde::from_str(text.split("---\n").nth(1).unwrap()).unwrap();
    let operations = patch::diff(&pod, &out.documents[0]);
    let mut paths: Vec<&str> = operations
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/spec/initContainers", "/spec/volumes"]);
    assert!(operations.iter().all(|o| o["op"] == "add"));
}

#[test]
fn stream_errors_name_the_document() {
    let config = InjectConfig::default();
    let error = manifest::inject_stream("in.yaml", "a: b\n---\n: : :\n  - [", &config)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("in.yaml: document 2:"), "{error}");
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  \
                template:\n    metadata:\n      annotations: {ficus.dev/inject: maybe}\n    \
                spec: {containers: []}\n";
    let error = manifest::inject_stream("in.yaml", text, &config)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("in.yaml: document 1 (Deployment web): annotation ficus.dev/inject"),
        "{error}"
    );
}

#[test]
fn probes_of_existing_native_sidecars_are_handled_too() {
    let mut spec = web_spec();
    spec["initContainers"] = json!([
        {"name": "migrate", "image": "web:1", "args": ["migrate"],
         "readinessProbe": {"tcpSocket": {"port": 7000}}},
        {"name": "log-shipper", "image": "shipper:2", "restartPolicy": "Always",
         "startupProbe": {"httpGet": {"path": "/up", "port": 2020}}},
    ]);
    let (object, _) = injected(deployment(
        json!({"ficus.dev/rewrite-app-probes": "false"}),
        spec.clone(),
    ));
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(
        flag(init, "--exclude-inbound-ports"),
        Some("2020,8080,8081,15000"),
        "the native sidecar's probe port, not the one-shot init container's"
    );

    let (object, _) = injected(deployment(json!({}), spec));
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(flag(init, "--exclude-inbound-ports"), Some("15000"));
    let shipper = init_container(&object, "/spec/template", "log-shipper");
    assert_eq!(
        shipper["startupProbe"]["httpGet"]["path"],
        "/app-health/log-shipper/startupz"
    );
    let migrate = init_container(&object, "/spec/template", "migrate");
    assert_eq!(
        migrate["readinessProbe"],
        json!({"tcpSocket": {"port": 7000}}),
        "kubelet does not probe a one-shot init container"
    );
}

#[test]
fn grpc_https_and_hook_ports_are_still_excluded_with_a_warning() {
    let spec = json!({"containers": [{"name": "app", "image": "a",
        "ports": [{"name": "grpc", "containerPort": 9090}, {"containerPort": 8443},
                  {"containerPort": 8080}],
        "livenessProbe": {"grpc": {"port": 9090}},
        "readinessProbe": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}},
        "startupProbe": {"httpGet": {"path": "/", "port": 8080}},
        "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": 8080}}}}]});
    let (object, outcome) = injected(deployment(json!({}), spec));
    let init = init_container(&object, "/spec/template", INIT_NAME);
    assert_eq!(
        flag(init, "--exclude-inbound-ports"),
        Some("8080,8443,9090,15000"),
        "the hook keeps 8080 excluded although its probe is rewritten"
    );
    let Outcome::Injected { warnings, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    let app = &object["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(app["livenessProbe"], json!({"grpc": {"port": 9090}}));
    assert_eq!(app["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(
        app["startupProbe"]["httpGet"]["path"],
        "/app-health/app/startupz"
    );
}

/// Values YAML 1.2 reads as strings and YAML 1.1 (kubectl) as booleans or numbers.
const RISKY: &[&str] = &[
    "yes", "on", "n", "Off", "0777", "1_000", "0b101", "0x1F", "+12", "1.", ".5", "1e3", "~",
    "-.inf",
];

const STREAM: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: flags, namespace: shop}
data:
  feature: "on"
  legacy: "yes"
  answer: "n"
  switch: "Off"
  mode: "0777"
  limit: "1_000"
  binary: "0b101"
  hex: "0x1F"
  signed: "+12"
  float: "1."
  fraction: ".5"
  exponent: "1e3"
  tilde: "~"
  infinite: "-.inf"
  "on": key
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: web:1.4.2
        env: [{name: VERBOSE, value: "yes"}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: plain, namespace: shop}
spec:
  selector: {matchLabels: {app: plain}}
  template:
    metadata: {labels: {app: plain}}
    spec:
      containers: [{name: plain, image: "plain:1", args: ["--port", "8080"]}]
"#;

fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    yaml_serde::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

#[test]
fn strings_yaml_1_1_would_misread_are_written_as_json_strings() {
    let injected = manifest::inject_stream("app.yaml", STREAM, &InjectConfig::default()).unwrap();
    let text = manifest::to_yaml(&injected.documents).unwrap();
    let parts: Vec<&str> = text.split("\n---\n").collect();
    assert_eq!(parts.len(), 3, "{text}");
    // The ConfigMap and the Deployment with `value: "yes"` are JSON: every string quoted.
    for (part, name) in parts[..2].iter().zip(["flags", "web"]) {
        let value: Value = serde_json::from_str(part)
            .unwrap_or_else(|e| panic!("{name} is not JSON ({e}):\n{part}"));
        assert_eq!(value["metadata"]["name"], name);
    }
    let data = serde_json::from_str::<Value>(parts[0]).unwrap()["data"].clone();
    for risky in RISKY {
        assert!(
            data.as_object().unwrap().values().any(|v| v == risky),
            "{risky} is a JSON string"
        );
    }
    assert_eq!(data["on"], "key", "keys too");
    let web: Value = serde_json::from_str(parts[1]).unwrap();
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "yes"
    );
    // A document without such strings stays block YAML, with quotes where YAML 1.2
    // needs them.
    assert!(
        parts[2].starts_with("apiVersion: apps/v1\n"),
        "{}",
        parts[2]
    );
    assert!(parts[2].contains("- '8080'"), "{}", parts[2]);
    for risky in RISKY {
        for line in parts[2].lines() {
            let line = line.trim();
            assert!(
                !line.ends_with(&format!(": {risky}")) && line != format!("- {risky}"),
                "{risky} plain in {line:?}"
            );
        }
    }
    // yaml_serde reads the stream back as it was.
    assert_eq!(documents(&text), injected.documents);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A probe handler on a numeric or named port (names may be undeclared).
    fn probe() -> impl Strategy<Value = Value> {
        let port = prop_oneof![
            (1u16..=65535).prop_map(|p| json!(p)),
            "[a-z]{1,6}".prop_map(|n| json!(n)),
        ];
        (
            prop_oneof![Just("httpGet"), Just("tcpSocket"), Just("grpc")],
            port,
        )
            .prop_map(|(action, port)| json!({action: {"port": port}}))
    }

    fn container() -> impl Strategy<Value = Value> {
        (
            "[a-z]{1,8}",
            proptest::collection::vec(("[a-z]{1,6}", 1u16..=65535), 0..3),
            proptest::option::of(probe()),
            proptest::option::of(probe()),
        )
            .prop_map(|(name, ports, readiness, liveness)| {
                let mut container = json!({
                    "name": name,
                    "image": "app:1",
                    "ports": ports.iter().map(|(n, p)| json!({"name": n, "containerPort": p}))
                        .collect::<Vec<_>>(),
                });
                if let Some(probe) = readiness {
                    container["readinessProbe"] = probe;
                }
                if let Some(probe) = liveness {
                    container["livenessProbe"] = probe;
                }
                container
            })
    }

    /// Annotation values: mostly well-formed lists, sometimes garbage.
    fn annotations() -> impl Strategy<Value = Value> {
        let ports = prop_oneof![
            proptest::collection::vec(1u16..=65535, 0..4).prop_map(|p| p
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")),
            ".{0,12}",
        ];
        (ports.clone(), ports, proptest::option::of(".{0,8}")).prop_map(|(out, inb, inject)| {
            let mut map = json!({
                "ficus.dev/exclude-outbound-ports": out,
                "ficus.dev/exclude-inbound-ports": inb,
            });
            if let Some(inject) = inject {
                map["ficus.dev/inject"] = json!(inject);
            }
            map
        })
    }

    proptest! {
        /// Any pod: no panic; an error leaves it unchanged; an injected pod is injected once
        /// (a second pass changes nothing) and its patch rebuilds it from the original.
        #[test]
        fn injection_is_total_idempotent_and_patchable(
            containers in proptest::collection::vec(container(), 1..4),
            annotations in annotations(),
        ) {
            let original = deployment(annotations, json!({"containers": containers}));
            let mut once = original.clone();
            match inject(&mut once, &InjectConfig::default()) {
                Err(_) => prop_assert_eq!(&once, &original),
                Ok(Outcome::Injected { .. }) => {
                    let mut twice = once.clone();
                    let again = inject(&mut twice, &InjectConfig::default()).unwrap();
                    prop_assert_eq!(again, Outcome::Skipped(Skip::AlreadyInjected));
                    prop_assert_eq!(&twice, &once);
                    let operations = patch::diff(&original, &once);
                    let mut patched = original.clone();
                    for operation in &operations {
                        let path = operation["path"].as_str().unwrap();
                        prop_assert!(
                            operation["op"] == "add"
                                || (operation["op"] == "replace"
                                    && path.ends_with("/containers")),
                            "{operation}"
                        );
                        *patched.pointer_mut(path.rsplit_once('/').unwrap().0).unwrap()
                            .as_object_mut().unwrap()
                            .entry(path.rsplit_once('/').unwrap().1)
                            .or_insert(Value::Null) = operation["value"].clone();
                    }
                    prop_assert_eq!(patched, once);
                }
                Ok(other) => {
                    prop_assert_eq!(other, Outcome::Skipped(Skip::OptedOut));
                    prop_assert_eq!(&once, &original);
                }
            }
        }

        /// Arbitrary JSON never panics the injector or the webhook.
        #[test]
        fn arbitrary_objects_never_panic(text in ".{0,200}", kind in prop_oneof![
            Just("Pod"), Just("Deployment"), Just("CronJob"), Just("List"), Just("Service")
        ]) {
            let mut object = json!({"apiVersion": if kind == "Pod" || kind == "List" { "v1" }
                else if kind == "CronJob" { "batch/v1" } else { "apps/v1" },
                "kind": kind, "spec": text, "items": [text], "metadata": {"annotations": text}});
            let _ = inject(&mut object, &InjectConfig::default());
            let _ = crate::webhook::review(text.as_bytes(), &InjectConfig::default());
        }
    }
}
