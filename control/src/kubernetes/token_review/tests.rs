use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{json, Value};

use super::*;
use crate::kubernetes::client::{self, stand_in};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/k8s/tokenreview"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// A TokenReview answer as kube hands it over (parsed by k8s-openapi).
fn review(json: &[u8]) -> TokenReview {
    serde_json::from_slice(json).unwrap()
}

#[test]
fn the_request_asks_for_our_audience() {
    assert_eq!(
        serde_json::to_value(review_request("abc", AUDIENCE)).unwrap(),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "metadata": {}, "spec": {"token": "abc", "audiences": ["ficus"]}})
    );
}

#[test]
fn an_authenticated_service_account_is_the_caller() {
    assert_eq!(
        caller_from_review(&review(&fixture("authenticated.json")), AUDIENCE),
        Ok(Caller {
            workload: "payments-v2".into(),
            namespace: "shop".into(),
            revocable: false,
        })
    );
}

#[test]
fn refusals_say_why() {
    assert_eq!(
        caller_from_review(&review(&fixture("expired.json")), AUDIENCE),
        Err(ReviewRefusal::NotAuthenticated(
            "[invalid bearer token, service account token has expired]".into()
        ))
    );
    assert!(matches!(
        caller_from_review(&review(&fixture("wrong-audience.json")), AUDIENCE),
        Err(ReviewRefusal::NotAuthenticated(why)) if why.contains("invalid for the target audiences")
    ));
    assert_eq!(
        caller_from_review(&review(&fixture("user.json")), AUDIENCE),
        Err(ReviewRefusal::NotAServiceAccount(
            "alice@example.com".into()
        ))
    );
    assert_eq!(
        caller_from_review(&review(&fixture("authenticated.json")), "other"),
        Err(ReviewRefusal::Audience("other".into())),
        "an answer for other audiences does not do"
    );
    let mut no_audiences: Value = serde_json::from_slice(&fixture("authenticated.json")).unwrap();
    no_audiences["status"]
        .as_object_mut()
        .unwrap()
        .remove("audiences");
    assert!(matches!(
        caller_from_review(&serde_json::from_value(no_audiences).unwrap(), AUDIENCE),
        Err(ReviewRefusal::Audience(_))
    ));
    for username in [
        "system:serviceaccount:shop",
        "system:serviceaccount:shop:../etc",
        "system:serviceaccount::sa",
        "system:serviceaccount:Shop:sa",
    ] {
        let mut answer: Value = serde_json::from_slice(&fixture("authenticated.json")).unwrap();
        answer["status"]["user"]["username"] = json!(username);
        assert!(
            matches!(
                caller_from_review(&serde_json::from_value(answer).unwrap(), AUDIENCE),
                Err(ReviewRefusal::NotAServiceAccount(_))
            ),
            "{username}"
        );
    }
    assert!(matches!(
        caller_from_review(&review(br#"{"kind": "TokenReview", "spec": {}}"#), AUDIENCE),
        Err(ReviewRefusal::NotAuthenticated(_))
    ));
}

/// What the stand-in API server saw.
#[derive(Debug, Default)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    body: Value,
}

/// The stand-in API server (none can run here) answering every request with `answer`; the
/// kube config that reaches it.
async fn api_server(
    answer: Vec<u8>,
    status: u16,
) -> (client::Config, Arc<Mutex<Vec<Seen>>>, tempfile::TempDir) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    let (config, dir) = stand_in::start(move |method, path, authorization, body: Bytes| {
        recorded.lock().unwrap().push(Seen {
            method: method.to_string(),
            path,
            authorization,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        let answer = answer.clone();
        async move {
            let mut response = http::Response::new(http_body_util::BodyExt::boxed(
                http_body_util::Full::new(Bytes::from(answer)),
            ));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            response
        }
    })
    .await;
    (config, seen, dir)
}

fn reviewer(config: client::Config) -> TokenReviewer {
    TokenReviewer::new(client::connect(config).unwrap(), AUDIENCE)
}

#[tokio::test]
async fn the_reviewer_posts_the_review_with_its_own_token() {
    let (config, seen, _dir) = api_server(fixture("authenticated.json"), 201).await;
    let caller = reviewer(config)
        .authenticate("the-sidecars-token")
        .await
        .unwrap();
    assert_eq!(caller.workload, "payments-v2");
    assert_eq!(caller.namespace, "shop");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert!(
        seen[0]
            .path
            .starts_with("/apis/authentication.k8s.io/v1/tokenreviews"),
        "{}",
        seen[0].path
    );
    assert_eq!(
        seen[0].authorization,
        format!("Bearer {}", stand_in::OWN_TOKEN)
    );
    assert_eq!(
        seen[0].body["spec"],
        json!({"token": "the-sidecars-token", "audiences": ["ficus"]})
    );
    assert_eq!(seen[0].body["kind"], "TokenReview");
}

#[tokio::test]
async fn refusals_and_api_errors_are_unknown_tokens() {
    for (answer, status) in [
        (fixture("expired.json"), 201),
        (
            br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}"#
                .to_vec(),
            403,
        ),
        (br#"{"kind":"Status","status":"Failure"}"#.to_vec(), 201),
        (b"not json".to_vec(), 201),
        (b"<html>".to_vec(), 500),
    ] {
        let (config, seen, _dir) = api_server(answer, status).await;
        assert_eq!(
            reviewer(config).authenticate("t").await,
            Err(AuthError::Unknown)
        );
        assert!(!seen.lock().unwrap().is_empty(), "asked");
    }
    // An API server whose certificate we do not trust is not asked at all.
    let (mut config, seen, _dir) = api_server(fixture("authenticated.json"), 201).await;
    config.root_cert = Some(stand_in::root_der(
        &ficus_identity::ca::CertificateAuthority::generate("cluster.local")
            .unwrap()
            .root_pem(),
    ));
    assert_eq!(
        reviewer(config).authenticate("t").await,
        Err(AuthError::Unknown)
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn first_of_tries_join_tokens_then_the_review() {
    let (config, _, dir) = api_server(fixture("authenticated.json"), 201).await;
    let join_file = dir.path().join("join.tokens");
    std::fs::write(&join_file, "0123456789abcdef-web web shop\n").unwrap();
    let join = crate::auth::join::JoinTokens::load(&join_file).unwrap();
    let chain = FirstOf(vec![
        Arc::new(join) as Arc<dyn TokenAuthenticator>,
        Arc::new(reviewer(config)),
    ]);
    assert_eq!(
        chain
            .authenticate("0123456789abcdef-web")
            .await
            .unwrap()
            .workload,
        "web"
    );
    assert_eq!(
        chain.authenticate("projected").await.unwrap().workload,
        "payments-v2"
    );
}
