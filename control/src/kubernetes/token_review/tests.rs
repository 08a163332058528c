use std::sync::Mutex;

use super::*;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/k8s/tokenreview"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

#[test]
fn the_request_asks_for_our_audience() {
    assert_eq!(
        review_request("abc", AUDIENCE),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {"token": "abc", "audiences": ["ficus"]}})
    );
}

#[test]
fn an_authenticated_service_account_is_the_caller() {
    assert_eq!(
        caller_from_review(&fixture("authenticated.json"), AUDIENCE),
        Ok(Caller {
            workload: "payments-v2".into(),
            namespace: "shop".into()
        })
    );
}

#[test]
fn refusals_say_why() {
    assert_eq!(
        caller_from_review(&fixture("expired.json"), AUDIENCE),
        Err(ReviewRefusal::NotAuthenticated(
            "[invalid bearer token, service account token has expired]".into()
        ))
    );
    assert!(matches!(
        caller_from_review(&fixture("wrong-audience.json"), AUDIENCE),
        Err(ReviewRefusal::NotAuthenticated(why)) if why.contains("invalid for the target audiences")
    ));
    assert_eq!(
        caller_from_review(&fixture("user.json"), AUDIENCE),
        Err(ReviewRefusal::NotAServiceAccount(
            "alice@example.com".into()
        ))
    );
    assert_eq!(
        caller_from_review(&fixture("authenticated.json"), "other"),
        Err(ReviewRefusal::Audience("other".into())),
        "an answer for other audiences does not do"
    );
    let mut no_audiences: Value = serde_json::from_slice(&fixture("authenticated.json")).unwrap();
    no_audiences["status"]
        .as_object_mut()
        .unwrap()
        .remove("audiences");
    assert!(matches!(
        caller_from_review(&serde_json::to_vec(&no_audiences).unwrap(), AUDIENCE),
        Err(ReviewRefusal::Audience(_))
    ));
    for username in [
        "system:serviceaccount:shop",
        "system:serviceaccount:shop:../etc",
        "system:serviceaccount::sa",
        "system:serviceaccount:Shop:sa",
    ] {
        let mut review: Value = serde_json::from_slice(&fixture("authenticated.json")).unwrap();
        review["status"]["user"]["username"] = json!(username);
        assert!(
            matches!(
                caller_from_review(&serde_json::to_vec(&review).unwrap(), AUDIENCE),
                Err(ReviewRefusal::NotAServiceAccount(_))
            ),
            "{username}"
        );
    }
    assert!(matches!(
        caller_from_review(b"<html>", AUDIENCE),
        Err(ReviewRefusal::Malformed(_))
    ));
    assert!(matches!(
        caller_from_review(br#"{"kind": "Status", "status": "Failure"}"#, AUDIENCE),
        Err(ReviewRefusal::Malformed(_))
    ));
}

/// What the stand-in API server saw.
#[derive(Debug, Default)]
struct Seen {
    path: String,
    authorization: String,
    body: Value,
}

/// The stand-in API server (none can run here) answering every request with `answer`.
async fn api_server(
    answer: Vec<u8>,
    status: u16,
) -> (ApiServer, Arc<Mutex<Vec<Seen>>>, tempfile::TempDir) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    let (server, dir) = crate::kubernetes::api::stand_in::start(
        move |_method, path, authorization, body: Bytes| {
            recorded.lock().unwrap().push(Seen {
                path,
                authorization,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            let answer = answer.clone();
            async move { crate::kubernetes::api::stand_in::json(status, &answer) }
        },
    )
    .await;
    (server, seen, dir)
}

#[tokio::test]
async fn the_reviewer_posts_the_review_with_its_own_token() {
    let (server, seen, _dir) = api_server(fixture("authenticated.json"), 201).await;
    let reviewer = TokenReviewer::new(server, AUDIENCE).unwrap();
    let caller = reviewer.authenticate("the-sidecars-token").await.unwrap();
    assert_eq!(caller.workload, "payments-v2");
    assert_eq!(caller.namespace, "shop");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(seen[0].authorization, "Bearer control-plane-own-token");
    assert_eq!(seen[0].body, review_request("the-sidecars-token", AUDIENCE));
}

#[tokio::test]
async fn refusals_and_api_errors_are_unknown_tokens() {
    for (answer, status) in [
        (fixture("expired.json"), 201),
        (br#"{"kind":"Status","reason":"Forbidden"}"#.to_vec(), 403),
        (b"not json".to_vec(), 201),
    ] {
        let (server, _, _dir) = api_server(answer, status).await;
        let reviewer = TokenReviewer::new(server, AUDIENCE).unwrap();
        assert_eq!(reviewer.authenticate("t").await, Err(AuthError::Unknown));
    }
    // An API server whose certificate we do not trust is not asked at all.
    let (mut server, seen, _dir) = api_server(fixture("authenticated.json"), 201).await;
    server.ca_pem = ficus_identity::ca::CertificateAuthority::generate("cluster.local")
        .unwrap()
        .root_pem();
    let reviewer = TokenReviewer::new(server, AUDIENCE).unwrap();
    assert_eq!(reviewer.authenticate("t").await, Err(AuthError::Unknown));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn first_of_tries_join_tokens_then_the_review() {
    let (server, _, dir) = api_server(fixture("authenticated.json"), 201).await;
    let join_file = dir.path().join("join.tokens");
    std::fs::write(&join_file, "0123456789abcdef-web web shop\n").unwrap();
    let join = crate::auth::join::JoinTokens::load(&join_file).unwrap();
    let chain = FirstOf(vec![
        Arc::new(join) as Arc<dyn TokenAuthenticator>,
        Arc::new(TokenReviewer::new(server, AUDIENCE).unwrap()),
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
