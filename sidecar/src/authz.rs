//! Inbound authorization: the AuthorizationPolicies that protect this workload.
//!
//! A policy protects this workload when its target Backend is named like the workload (in our
//! namespace) or has an endpoint whose identity is ours. A request is denied when any DENY
//! policy matches it; otherwise, when there is at least one ALLOW policy, it is allowed only
//! if one matches; with no policy at all everything is allowed. A rule matches when one of its
//! `from` identities matches the verified peer (exact, or a pattern ending in `*`; a request
//! without a verified peer matches no identity) — or it names none — and one of its `to`
//! entries matches the method and the path (same pattern rules) — or it has none. The path is
//! matched without `;` parameters, and `GET` covers `HEAD` ([`Authorizer::check`]).

use ficus_config::{AuthorizationPolicy, AuthzAction, AuthzRule, Config, ResourceKey};
use http::Method;

/// The compiled policies of this workload.
#[derive(Debug, Default)]
pub struct Authorizer {
    allow: Vec<AuthzRule>,
    deny: Vec<AuthzRule>,
    has_allow_policy: bool,
}

/// Whether Backend `target` is this workload (`workload` in `namespace`): it is named like the
/// workload in our namespace, names it as its `serviceAccount`, or one of its endpoints has
/// our identity. Policies that target such a Backend (AuthorizationPolicy, TrafficPolicy
/// `rateLimit`) apply on our inbound side.
pub fn is_own_backend(
    config: &Config,
    target: &ResourceKey,
    namespace: &str,
    workload: &str,
) -> bool {
    if target.namespace != namespace {
        return false;
    }
    if target.name == workload {
        return true;
    }
    let identity_suffix = format!("/ns/{namespace}/sa/{workload}");
    config.backends.get(target).is_some_and(|backend| {
        backend.service_account.as_deref() == Some(workload)
            || backend.endpoints.iter().any(|e| {
                e.identity
                    .as_deref()
                    .is_some_and(|id| id.ends_with(&identity_suffix))
            })
    })
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Allow,
    /// Refuse it (403).
    Deny,
}

impl Authorizer {
    /// The policies of `config` that protect workload `workload` in `namespace`.
    pub fn new(config: &Config, namespace: &str, workload: &str) -> Self {
        let protects_us = |policy: &AuthorizationPolicy| {
            is_own_backend(config, &policy.target, namespace, workload)
        };
        let mut authorizer = Self::default();
        for policy in config
            .authorization_policies
            .iter()
            .filter(|p| protects_us(p))
        {
            match policy.action {
                AuthzAction::Allow => {
                    authorizer.has_allow_policy = true;
                    authorizer.allow.extend(policy.rules.iter().cloned());
                }
                AuthzAction::Deny => authorizer.deny.extend(policy.rules.iter().cloned()),
            }
        }
        authorizer
    }

    /// Whether any policy applies (so requests need checking).
    pub fn is_active(&self) -> bool {
        self.has_allow_policy || !self.deny.is_empty()
    }

    /// Decides for a request from `peer` (the verified SPIFFE ID, if any).
    ///
    /// The path is matched without its segments' `;` parameters (`/admin;x` is `/admin`, as
    /// Tomcat serves it: [`ficus_config::path::without_parameters`]), and a rule that names
    /// `GET` also covers `HEAD` (RFC 9110 §9.3.2: the same request without the response body,
    /// which servers answer with their GET handler).
    pub fn check(&self, peer: Option<&str>, method: &Method, path: &str) -> Decision {
        let bare = ficus_config::path::without_parameters(path);
        let method = method.as_str();
        let denied = |path: &str| {
            self.deny
                .iter()
                .any(|rule| rule_matches(rule, peer, method, path))
        };
        // A DENY holds on the path as sent or without its parameters (a pattern such as
        // `/admin%*` names the one, `/admin` the other); an ALLOW only on the path without.
        let stripped = matches!(bare, std::borrow::Cow::Owned(_));
        if denied(path) || (stripped && denied(&bare)) {
            return Decision::Deny;
        }
        if self.has_allow_policy
            && !self
                .allow
                .iter()
                .any(|rule| rule_matches(rule, peer, method, &bare))
        {
            return Decision::Deny;
        }
        Decision::Allow
    }
}

impl Authorizer {
    /// Decides for an opaque TCP connection from `peer`. It has no method or path, so a rule
    /// that names any (`to`) never allows it, and a DENY rule denies it on its sources alone
    /// (failing closed, as a DENY meant for some requests must not let whole connections by).
    pub fn check_tcp(&self, peer: Option<&str>) -> Decision {
        let from = |rule: &AuthzRule| {
            rule.from_identities.is_empty()
                || peer.is_some_and(|peer| {
                    rule.from_identities
                        .iter()
                        .any(|p| pattern_matches(p, peer))
                })
        };
        if self.deny.iter().any(from) {
            return Decision::Deny;
        }
        if self.has_allow_policy && !self.allow.iter().any(|r| r.to.is_empty() && from(r)) {
            return Decision::Deny;
        }
        Decision::Allow
    }
}

fn rule_matches(rule: &AuthzRule, peer: Option<&str>, method: &str, path: &str) -> bool {
    let from = rule.from_identities.is_empty()
        || peer.is_some_and(|peer| {
            rule.from_identities
                .iter()
                .any(|p| pattern_matches(p, peer))
        });
    let to = rule.to.is_empty()
        || rule.to.iter().any(|to| {
            (to.methods.is_empty()
                || to
                    .methods
                    .iter()
                    .any(|m| m == method || (method == "HEAD" && m == "GET")))
                && (to.paths.is_empty() || to.paths.iter().any(|p| pattern_matches(p, path)))
        });
    from && to
}

/// Exact, or a prefix when the pattern ends in `*`.
fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use ficus_config::AuthzTo;

    use super::*;

    fn rule(from: &[&str], methods: &[&str], paths: &[&str]) -> AuthzRule {
        let to = if methods.is_empty() && paths.is_empty() {
            Vec::new()
        } else {
            vec![AuthzTo {
                methods: methods.iter().map(|s| (*s).to_owned()).collect(),
                paths: paths.iter().map(|s| (*s).to_owned()).collect(),
            }]
        };
        AuthzRule {
            from_identities: from.iter().map(|s| (*s).to_owned()).collect(),
            to,
        }
    }

    /// A Backend is ours by its name, by its `serviceAccount`, or by an endpoint's identity.
    #[test]
    fn own_backends() {
        let text = "apiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
                    metadata: {name: payments, namespace: shop}\n\
                    spec: {endpoints: [], serviceAccount: payments-sa}\n---\n\
                    apiVersion: ficus.dev/v1alpha1\nkind: Backend\n\
                    metadata: {name: ledger, namespace: shop}\n\
                    spec: {endpoints: [{address: 127.0.0.1:1, \
                    identity: spiffe://cluster.local/ns/shop/sa/ledger-sa}]}\n";
        let config = ficus_config::parse_str("own.yaml", text).unwrap();
        let ours = |name: &str, workload: &str| {
            is_own_backend(&config, &ResourceKey::new("shop", name), "shop", workload)
        };
        assert!(ours("payments", "payments"));
        assert!(ours("payments", "payments-sa"));
        assert!(!ours("payments", "ledger-sa"));
        assert!(ours("ledger", "ledger-sa"));
        assert!(!is_own_backend(
            &config,
            &ResourceKey::new("shop", "payments"),
            "web",
            "payments-sa"
        ));
    }

    const GATEWAY: &str = "spiffe://cluster.local/ns/shop/sa/gateway";
    const OTHER: &str = "spiffe://cluster.local/ns/web/sa/other";

    /// What some app servers read as the same request is the same to a policy: `;`
    /// parameters are dropped, and HEAD is GET.
    #[test]
    fn parameters_and_head_cannot_get_past_a_deny() {
        let deny = Authorizer {
            allow: vec![],
            deny: vec![rule(&[], &["GET"], &["/admin"])],
            has_allow_policy: false,
        };
        for (method, path) in [
            (Method::GET, "/admin"),
            (Method::GET, "/admin;x"),
            (Method::GET, "/admin;jsessionid=1"),
            (Method::GET, "/admin%3Bx"),
            (Method::HEAD, "/admin"),
        ] {
            assert_eq!(
                deny.check(None, &method, path),
                Decision::Deny,
                "{method} {path}"
            );
        }
        assert_eq!(deny.check(None, &Method::GET, "/admin/x"), Decision::Allow);
        // A pattern that names the parameter as sent still denies it.
        let sent = Authorizer {
            allow: vec![],
            deny: vec![rule(&[], &[], &["/admin%*"])],
            has_allow_policy: false,
        };
        assert_eq!(sent.check(None, &Method::GET, "/admin%3Bx"), Decision::Deny);
        // An ALLOW is matched without the parameters: `/public;x` is `/public`.
        let allow = Authorizer {
            allow: vec![rule(&[], &[], &["/public"])],
            deny: vec![],
            has_allow_policy: true,
        };
        assert_eq!(
            allow.check(None, &Method::GET, "/public;x"),
            Decision::Allow
        );
        assert_eq!(
            allow.check(None, &Method::GET, "/admin;/public"),
            Decision::Deny
        );
        assert_eq!(deny.check(None, &Method::POST, "/admin"), Decision::Allow);
        // HEAD names only itself.
        let head = Authorizer {
            deny: vec![rule(&[], &["HEAD"], &[])],
            ..deny
        };
        assert_eq!(head.check(None, &Method::GET, "/"), Decision::Allow);
    }

    #[test]
    fn allow_deny_and_default() {
        let open = Authorizer::default();
        assert!(!open.is_active());
        assert_eq!(open.check(None, &Method::GET, "/"), Decision::Allow);

        let allow = Authorizer {
            allow: vec![rule(&[GATEWAY], &["GET", "POST"], &["/api/payments/*"])],
            deny: vec![],
            has_allow_policy: true,
        };
        assert_eq!(
            allow.check(Some(GATEWAY), &Method::GET, "/api/payments/1"),
            Decision::Allow
        );
        assert_eq!(
            allow.check(Some(OTHER), &Method::GET, "/api/payments/1"),
            Decision::Deny
        );
        assert_eq!(
            allow.check(Some(GATEWAY), &Method::DELETE, "/api/payments/1"),
            Decision::Deny
        );
        assert_eq!(
            allow.check(Some(GATEWAY), &Method::GET, "/admin"),
            Decision::Deny
        );
        assert_eq!(
            allow.check(None, &Method::GET, "/api/payments/1"),
            Decision::Deny,
            "no peer"
        );

        let both = Authorizer {
            deny: vec![rule(
                &["spiffe://cluster.local/ns/shop/*"],
                &[],
                &["/api/payments/refund*"],
            )],
            ..allow
        };
        assert_eq!(
            both.check(Some(GATEWAY), &Method::POST, "/api/payments/refund/9"),
            Decision::Deny,
            "DENY wins"
        );
        assert_eq!(
            both.check(Some(GATEWAY), &Method::POST, "/api/payments/9"),
            Decision::Allow
        );
    }

    #[test]
    fn tcp_connections_match_sources_only() {
        let open = Authorizer::default();
        assert_eq!(open.check_tcp(None), Decision::Allow);
        let allow = Authorizer {
            allow: vec![rule(&[GATEWAY], &[], &[]), rule(&[OTHER], &["GET"], &[])],
            deny: vec![],
            has_allow_policy: true,
        };
        assert_eq!(allow.check_tcp(Some(GATEWAY)), Decision::Allow);
        assert_eq!(
            allow.check_tcp(Some(OTHER)),
            Decision::Deny,
            "a rule naming methods never allows a connection"
        );
        assert_eq!(allow.check_tcp(None), Decision::Deny);
        let deny = Authorizer {
            deny: vec![rule(&[GATEWAY], &[], &["/admin"])],
            ..allow
        };
        assert_eq!(
            deny.check_tcp(Some(GATEWAY)),
            Decision::Deny,
            "a DENY naming paths still refuses connections from its sources"
        );
    }
}
