//! Real handshakes over in-memory pipes between configs built by this module.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose};
use rustls::{AlertDescription, ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::*;
use crate::ca::CertificateAuthority;
use crate::csr::WorkloadKey;
use crate::test_pki::{id, Authority, Leaf, LeafSpec, TD};
use crate::SpiffeId;

/// The test PKI: a root with an intermediate that issues the workloads.
struct Mesh {
    root: Authority,
    issuer: Authority,
}

impl Mesh {
    fn new() -> Self {
        let root = Authority::root("test root");
        let issuer = root.intermediate("test intermediate");
        Self { root, issuer }
    }

    fn bundle(&self) -> TrustBundle {
        self.root.bundle()
    }

    fn leaf(&self, spiffe_id: &str) -> Leaf {
        self.issuer.leaf(&LeafSpec::good(spiffe_id))
    }

    fn server(&self, leaf: &Leaf) -> Arc<ServerConfig> {
        server_config(leaf.store(), &self.bundle(), ClientAuth::Required).unwrap()
    }

    fn client(&self, leaf: Option<&Leaf>, expected: &str) -> Arc<ClientConfig> {
        let expected = SpiffeId::parse(expected).unwrap();
        client_config(leaf.map(Leaf::store), &self.bundle(), &expected).unwrap()
    }
}

/// What one side saw of a completed exchange.
#[derive(Debug)]
struct Peer {
    id: Option<SpiffeId>,
    leaf: Option<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
}

fn peer_of(connection: &rustls::CommonState) -> Peer {
    let certificates = connection.peer_certificates();
    Peer {
        id: peer_identity(certificates),
        leaf: certificates
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned()),
        alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
    }
}

const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn server_name() -> ServerName<'static> {
    // The sidecar passes the endpoint IP; the verifier must not check it.
    ServerName::try_from("10.1.2.3").unwrap()
}

async fn accept(
    config: Arc<ServerConfig>,
    io: DuplexStream,
) -> io::Result<server::TlsStream<DuplexStream>> {
    TlsAcceptor::from(config).accept(io).await
}

async fn connect(
    config: Arc<ClientConfig>,
    io: DuplexStream,
) -> io::Result<client::TlsStream<DuplexStream>> {
    TlsConnector::from(config).connect(server_name(), io).await
}

/// A ping from the client and a pong from the server over an established connection. In TLS
/// 1.3 the client finishes its side before the server has checked the client certificate, so
/// a rejection only shows when the client reads.
async fn ping_pong(
    server: &mut server::TlsStream<DuplexStream>,
    client: &mut client::TlsStream<DuplexStream>,
) -> io::Result<()> {
    client.write_all(b"ping").await?;
    client.flush().await?;
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await?;
    server.flush().await?;
    client.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    Ok(())
}

/// A full handshake and a ping/pong; each side's result.
async fn exchange(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (io::Result<Peer>, io::Result<Peer>) {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let server_side = async move {
        let mut tls = accept(server, server_io).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok(peer_of(tls.get_ref().1))
    };
    let client_side = async move {
        let mut tls = connect(client, client_io).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        Ok(peer_of(tls.get_ref().1))
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("handshake finished in time")
}

fn rustls_of(error: &io::Error) -> &rustls::Error {
    rustls_error(error).unwrap_or_else(|| panic!("not a rustls error: {error:?}"))
}

fn svid_of(error: &io::Error) -> &SvidError {
    SvidError::from_rustls(rustls_of(error))
        .unwrap_or_else(|| panic!("not an SVID error: {error:?}"))
}

#[tokio::test]
async fn mutual_handshake_yields_both_identities_and_h2() {
    let mesh = Mesh::new();
    let (server_id, client_id) = (id("default", "server"), id("default", "client"));
    let server_leaf = mesh.leaf(&server_id);
    let client_leaf = mesh.leaf(&client_id);
    let (server, client) = exchange(
        mesh.server(&server_leaf),
        mesh.client(Some(&client_leaf), &server_id),
    )
    .await;
    let (server, client) = (server.unwrap(), client.unwrap());
    assert_eq!(server.id.unwrap().as_str(), client_id);
    assert_eq!(client.id.unwrap().as_str(), server_id);
    assert_eq!(server.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn ca_issued_certificates_work_end_to_end() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let bundle = TrustBundle::from_pem(&ca.root_pem(), TD).unwrap();
    let issue = |sa: &str| {
        let key = WorkloadKey::generate().unwrap();
        let id = SpiffeId::workload(TD, "prod", sa).unwrap();
        let issued = ca
            .sign_workload_csr(&key.csr_pem(&id).unwrap(), &id, Duration::from_secs(600))
            .unwrap();
        (
            id,
            CertStore::with_credentials(Credentials::from_pem(&issued.chain_pem, &key).unwrap()),
        )
    };
    let (server_id, server_store) = issue("api");
    let (client_id, client_store) = issue("web");
    let server = server_config(server_store, &bundle, ClientAuth::Required).unwrap();
    let client = client_config(Some(client_store), &bundle, &server_id).unwrap();
    let (server, client) = exchange(server, client).await;
    assert_eq!(server.unwrap().id, Some(client_id));
    assert_eq!(client.unwrap().id, Some(server_id));
}

#[tokio::test]
async fn control_plane_server_certificate_without_client_auth() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let bundle = TrustBundle::from_pem(&ca.root_pem(), TD).unwrap();
    let control = SpiffeId::parse(&format!("spiffe://{TD}/ficus/control")).unwrap();
    let (issued, key_pem) = ca
        .issue_server(
            &control,
            &["control.ficus.svc".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(600),
        )
        .unwrap();
    let store = CertStore::with_credentials(
        Credentials::from_pem_key(&issued.chain_pem, &key_pem).unwrap(),
    );
    let server = server_config(store, &bundle, ClientAuth::None).unwrap();
    let client = client_config(None, &bundle, &control).unwrap();
    let (server, client) = exchange(server, client).await;
    assert_eq!(server.unwrap().id, None, "no client certificate asked");
    assert_eq!(client.unwrap().id, Some(control));
}

/// One broken leaf of the TLS-3 matrix (plus foreign trust domain and foreign root).
struct BadLeaf {
    name: &'static str,
    leaf: Leaf,
    /// The label `handshake_failure_reason` must give on the verifying side.
    reason: &'static str,
    /// Checks the verifier's error in detail.
    check: fn(&rustls::Error) -> bool,
}

fn svid_is(error: &rustls::Error, expected: fn(&SvidError) -> bool) -> bool {
    SvidError::from_rustls(error).is_some_and(expected)
}

fn bad_leaves(mesh: &Mesh, good: &str) -> Vec<BadLeaf> {
    let spec = |f: fn(&mut LeafSpec)| {
        let mut spec = LeafSpec::good(good);
        f(&mut spec);
        spec
    };
    let with_uris = |uris: &[&str]| LeafSpec {
        uris: uris.iter().map(|uri| (*uri).to_owned()).collect(),
        ..LeafSpec::good(good)
    };
    let foreign_root = Authority::root("foreign root");
    vec![
        BadLeaf {
            name: "two URI SANs (one of them the expected ID)",
            leaf: mesh
                .issuer
                .leaf(&with_uris(&[good, &id("default", "other")])),
            reason: "bad_certificate",
            check: |e| svid_is(e, |s| matches!(s, SvidError::MultipleUriSans { count: 2 })),
        },
        BadLeaf {
            name: "no URI SAN",
            leaf: mesh.issuer.leaf(&spec(|s| {
                s.uris.clear();
                s.dns = vec!["server.mesh.test".to_owned()];
            })),
            reason: "bad_certificate",
            check: |e| svid_is(e, |s| matches!(s, SvidError::NoUriSan)),
        },
        BadLeaf {
            name: "root path spiffe://td",
            leaf: mesh.issuer.leaf(&with_uris(&[&format!("spiffe://{TD}")])),
            reason: "bad_certificate",
            check: |e| {
                svid_is(e, |s| {
                    matches!(s, SvidError::InvalidId(SpiffeError::EmptyPath { .. }))
                })
            },
        },
        BadLeaf {
            name: "root path spiffe://td/",
            leaf: mesh.issuer.leaf(&with_uris(&[&format!("spiffe://{TD}/")])),
            reason: "bad_certificate",
            check: |e| {
                svid_is(e, |s| {
                    matches!(s, SvidError::InvalidId(SpiffeError::EmptyPath { .. }))
                })
            },
        },
        BadLeaf {
            name: "non-spiffe scheme",
            leaf: mesh
                .issuer
                .leaf(&with_uris(&[&format!("https://{TD}/ns/default/sa/server")])),
            reason: "bad_certificate",
            check: |e| {
                svid_is(e, |s| {
                    matches!(s, SvidError::InvalidId(SpiffeError::Scheme { .. }))
                })
            },
        },
        BadLeaf {
            name: "`..` in the path",
            leaf: mesh
                .issuer
                .leaf(&with_uris(&[&format!("spiffe://{TD}/ns/../sa/server")])),
            reason: "bad_certificate",
            check: |e| {
                svid_is(e, |s| {
                    matches!(s, SvidError::InvalidId(SpiffeError::DotSegment { .. }))
                })
            },
        },
        BadLeaf {
            name: "percent-encoding in the path",
            leaf: mesh.issuer.leaf(&with_uris(&[&format!(
                "spiffe://{TD}/ns/default/sa/ser%76er"
            )])),
            reason: "bad_certificate",
            check: |e| {
                svid_is(e, |s| {
                    matches!(s, SvidError::InvalidId(SpiffeError::PercentEncoding { .. }))
                })
            },
        },
        BadLeaf {
            name: "leaf with cA=true",
            leaf: mesh.issuer.leaf(&spec(|s| {
                s.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
            })),
            reason: "bad_certificate",
            // webpki refuses a CA certificate as an end entity before our check runs; either
            // refusal will do, as long as it is one.
            check: |e| {
                svid_is(e, |s| matches!(s, SvidError::CaLeaf))
                    || matches!(
                        e,
                        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(_))
                    )
            },
        },
        BadLeaf {
            name: "leaf with keyCertSign",
            leaf: mesh.issuer.leaf(&spec(|s| {
                s.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            })),
            reason: "bad_certificate",
            check: |e| svid_is(e, |s| matches!(s, SvidError::SigningLeaf)),
        },
        BadLeaf {
            name: "leaf without digitalSignature",
            leaf: mesh.issuer.leaf(&spec(|s| {
                s.key_usages = vec![KeyUsagePurpose::KeyAgreement]
            })),
            reason: "bad_certificate",
            check: |e| svid_is(e, |s| matches!(s, SvidError::NoDigitalSignature)),
        },
        BadLeaf {
            name: "leaf without keyUsage",
            leaf: mesh.issuer.leaf(&spec(|s| s.key_usages.clear())),
            reason: "bad_certificate",
            check: |e| svid_is(e, |s| matches!(s, SvidError::NoDigitalSignature)),
        },
        BadLeaf {
            name: "foreign trust domain",
            leaf: mesh
                .issuer
                .leaf(&with_uris(&["spiffe://other.test/ns/default/sa/server"])),
            reason: "spiffe_mismatch",
            check: |e| svid_is(e, |s| matches!(s, SvidError::ForeignTrustDomain { .. })),
        },
        BadLeaf {
            name: "expired",
            leaf: mesh.issuer.leaf(&spec(|s| {
                s.not_before = SystemTime::now() - Duration::from_secs(7200);
                s.not_after = SystemTime::now() - Duration::from_secs(3600);
            })),
            reason: "expired",
            check: |e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ExpiredContext { .. }
                    )
                )
            },
        },
        BadLeaf {
            name: "foreign root",
            leaf: foreign_root.leaf(&LeafSpec::good(good)),
            reason: "unknown_ca",
            // Checked per direction below.
            check: |_| true,
        },
    ]
}

#[tokio::test]
async fn server_rejects_bad_client_certificates() {
    let mesh = Mesh::new();
    let server_id = id("default", "server");
    let client_id = id("default", "client");
    let server = mesh.server(&mesh.leaf(&server_id));
    for bad in bad_leaves(&mesh, &client_id) {
        let client = mesh.client(Some(&bad.leaf), &server_id);
        let (server_result, client_result) = exchange(Arc::clone(&server), client).await;
        let server_error = server_result.expect_err(bad.name);
        let error = rustls_of(&server_error);
        assert_eq!(
            handshake_failure_reason(error),
            bad.reason,
            "{}: {error}",
            bad.name
        );
        assert!((bad.check)(error), "{}: {error:?}", bad.name);
        let client_error = client_result.expect_err(bad.name);
        let alert = rustls_of(&client_error);
        assert!(
            matches!(alert, rustls::Error::AlertReceived(_)),
            "{}: {alert:?}",
            bad.name
        );
        if bad.reason == "unknown_ca" {
            // TLS-1: a client certificate from an untrusted CA gets `unknown_ca`.
            assert_eq!(
                error,
                &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            );
            assert_eq!(
                alert,
                &rustls::Error::AlertReceived(AlertDescription::UnknownCA)
            );
            assert_eq!(handshake_failure_reason(alert), "unknown_ca");
        }
    }
}

#[tokio::test]
async fn client_rejects_bad_server_certificates() {
    let mesh = Mesh::new();
    let server_id = id("default", "server");
    let client_leaf = mesh.leaf(&id("default", "client"));
    for bad in bad_leaves(&mesh, &server_id) {
        let server = mesh.server(&bad.leaf);
        let client = mesh.client(Some(&client_leaf), &server_id);
        let (server_result, client_result) = exchange(server, client).await;
        let client_error = client_result.expect_err(bad.name);
        let error = rustls_of(&client_error);
        assert_eq!(
            handshake_failure_reason(error),
            bad.reason,
            "{}: {error}",
            bad.name
        );
        assert!((bad.check)(error), "{}: {error:?}", bad.name);
        if bad.reason == "unknown_ca" {
            assert!(matches!(
                svid_of(&client_error),
                SvidError::UnknownIssuer { .. }
            ));
            assert!(
                error
                    .to_string()
                    .contains("unknown issuer for trust domain mesh.test"),
                "{error}"
            );
        }
        let server_error = server_result.expect_err(bad.name);
        assert!(
            matches!(rustls_of(&server_error), rustls::Error::AlertReceived(_)),
            "{}: {server_error:?}",
            bad.name
        );
    }
}

#[tokio::test]
async fn client_rejects_a_valid_server_with_another_identity() {
    let mesh = Mesh::new();
    let presented = id("default", "x");
    let expected = id("default", "y");
    let server = mesh.server(&mesh.leaf(&presented));
    let client = mesh.client(Some(&mesh.leaf(&id("default", "client"))), &expected);
    let (server_result, client_result) = exchange(server, client).await;
    let client_error = client_result.unwrap_err();
    let error = rustls_of(&client_error);
    assert_eq!(handshake_failure_reason(error), "spiffe_mismatch");
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "server presented {presented}, expected {expected}"
        )),
        "{message}"
    );
    assert!(server_result.is_err());
}

#[tokio::test]
async fn server_requires_a_client_certificate() {
    let mesh = Mesh::new();
    let server_id = id("default", "server");
    let server = mesh.server(&mesh.leaf(&server_id));
    let client = mesh.client(None, &server_id);
    let (server_result, client_result) = exchange(server, client).await;
    let server_error = server_result.unwrap_err();
    assert_eq!(
        rustls_of(&server_error),
        &rustls::Error::NoCertificatesPresented
    );
    assert_eq!(
        handshake_failure_reason(rustls_of(&server_error)),
        "certificate_required"
    );
    let client_error = client_result.unwrap_err();
    assert_eq!(
        rustls_of(&client_error),
        &rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
    );
}

#[tokio::test]
async fn optional_client_auth_admits_anonymous_clients_and_verifies_presented_certificates() {
    let mesh = Mesh::new();
    let server_id = id("ficus-system", "ficus-control");
    let server_leaf = mesh.leaf(&server_id);
    let server =
        || server_config(server_leaf.store(), &mesh.bundle(), ClientAuth::Optional).unwrap();

    let (server_side, client_side) = exchange(server(), mesh.client(None, &server_id)).await;
    assert_eq!(server_side.unwrap().id, None);
    assert_eq!(client_side.unwrap().id.unwrap().as_str(), server_id);

    let admin_id = id("ficus-system", "alice");
    let admin = mesh.client(Some(&mesh.leaf(&admin_id)), &server_id);
    let (server_side, client_side) = exchange(server(), admin).await;
    assert_eq!(server_side.unwrap().id.unwrap().as_str(), admin_id);
    client_side.unwrap();

    // A certificate that is presented must chain to the bundle, optional or not.
    let foreign = Mesh::new();
    let stranger = client_config_trusting(
        Some(foreign.leaf(&admin_id).store()),
        TrustStore::new(mesh.bundle()).unwrap(),
        &SpiffeId::parse(&server_id).unwrap(),
    )
    .unwrap();
    let (server_side, _) = exchange(server(), stranger).await;
    assert_eq!(
        rustls_of(&server_side.unwrap_err()),
        &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
}

#[tokio::test]
async fn server_without_a_certificate_refuses_handshakes() {
    let mesh = Mesh::new();
    let server = server_config(CertStore::new(), &mesh.bundle(), ClientAuth::Required).unwrap();
    let client = mesh.client(Some(&mesh.leaf(&id("a", "b"))), &id("a", "c"));
    let (server_result, client_result) = exchange(server, client).await;
    assert!(server_result.is_err());
    assert!(client_result.is_err());
}

/// A TLS 1.2 ClientHello (no supported_versions extension), as `openssl s_client -tls1_2`
/// sends it, minus everything a server needs no opinion on.
fn tls12_client_hello() -> Vec<u8> {
    let mut extensions = Vec::new();
    // supported_groups: x25519, secp256r1
    extensions.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    extensions.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    extensions.extend_from_slice(&[
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE AES-GCM suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn tls12_only_client_is_refused_with_protocol_version() {
    let mesh = Mesh::new();
    let server = mesh.server(&mesh.leaf(&id("default", "server")));
    let (server_io, mut client_io) = tokio::io::duplex(64 * 1024);
    let server_side = accept(server, server_io);
    let client_side = async move {
        client_io.write_all(&tls12_client_hello()).await.unwrap();
        let mut response = Vec::new();
        client_io.read_to_end(&mut response).await.unwrap();
        response
    };
    let (server_result, response) = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        tokio::join!(server_side, client_side)
    })
    .await
    .unwrap();
    let server_error = server_result.expect_err("handshake refused");
    assert_eq!(
        handshake_failure_reason(rustls_of(&server_error)),
        "protocol_version"
    );
    // One alert record: level fatal (2), description protocol_version (70).
    assert_eq!(response.first(), Some(&0x15), "{response:?}");
    assert_eq!(&response[response.len() - 2..], &[2, 70], "{response:?}");
}

#[tokio::test]
async fn rotation_reaches_new_handshakes_and_spares_established_connections() {
    let mesh = Mesh::new();
    let server_id = id("default", "server");
    let first = mesh.leaf(&server_id);
    let second = mesh.leaf(&server_id);
    let store = CertStore::with_credentials(first.credentials());
    let server = server_config(Arc::clone(&store), &mesh.bundle(), ClientAuth::Required).unwrap();
    let client = mesh.client(Some(&mesh.leaf(&id("default", "client"))), &server_id);

    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let (mut old_server, mut old_client) = tokio::join!(
        accept(Arc::clone(&server), server_io),
        connect(Arc::clone(&client), client_io)
    );
    let (old_server, old_client) = (old_server.as_mut().unwrap(), old_client.as_mut().unwrap());
    ping_pong(old_server, old_client).await.unwrap();
    assert_eq!(
        peer_of(old_client.get_ref().1).leaf.as_ref(),
        Some(&first.chain[0])
    );

    store.install(second.credentials());
    assert_eq!(store.id().unwrap().as_str(), server_id);

    let (_, client_peer) = exchange(Arc::clone(&server), Arc::clone(&client)).await;
    assert_eq!(
        client_peer.unwrap().leaf.as_ref(),
        Some(&second.chain[0]),
        "new handshakes get the new cert"
    );
    ping_pong(old_server, old_client)
        .await
        .expect("the connection made before rotation still works");
}

#[tokio::test]
async fn root_rotation() {
    let old = Mesh::new();
    let new = Mesh::new();
    let both = TrustBundle::from_pem(&format!("{}{}", old.root.pem(), new.root.pem()), TD).unwrap();
    let server_id = id("default", "server");
    let expected = SpiffeId::parse(&server_id).unwrap();

    // Step 1–2: the bundle holds both roots; workloads under either root talk to each other.
    for (server_mesh, client_mesh) in [(&old, &new), (&new, &old), (&new, &new)] {
        let server = server_config(
            server_mesh.leaf(&server_id).store(),
            &both,
            ClientAuth::Required,
        )
        .unwrap();
        let client_leaf = client_mesh.leaf(&id("default", "client"));
        let client = client_config(Some(client_leaf.store()), &both, &expected).unwrap();
        let (server_result, client_result) = exchange(server, client).await;
        server_result.unwrap();
        client_result.unwrap();
    }

    // Negative case: the old root is removed before a server was re-issued.
    let only_new = new.bundle();
    let server = server_config(
        old.leaf(&server_id).store(),
        &only_new,
        ClientAuth::Required,
    )
    .unwrap();
    let client = client_config(
        Some(new.leaf(&id("default", "client")).store()),
        &only_new,
        &expected,
    )
    .unwrap();
    let (_, client_result) = exchange(server, client).await;
    let client_error = client_result.unwrap_err();
    assert!(
        client_error
            .to_string()
            .contains("unknown issuer for trust domain mesh.test"),
        "{client_error}"
    );
    assert_eq!(
        handshake_failure_reason(rustls_of(&client_error)),
        "unknown_ca"
    );

    // And a leaf of the new root against a bundle with only the old root.
    let only_old = old.bundle();
    let server = server_config(
        new.leaf(&server_id).store(),
        &only_old,
        ClientAuth::Required,
    )
    .unwrap();
    let client = client_config(
        Some(old.leaf(&id("default", "client")).store()),
        &only_old,
        &expected,
    )
    .unwrap();
    let (_, client_result) = exchange(server, client).await;
    let message = client_result.unwrap_err().to_string();
    assert!(
        message.contains("unknown issuer for trust domain mesh.test"),
        "{message}"
    );
}

#[test]
fn credentials_check_the_leaf_and_the_key() {
    let mesh = Mesh::new();
    let leaf = mesh.leaf(&id("ns", "sa"));
    let credentials = Credentials::from_pem_key(&leaf.chain_pem(), &leaf.key_pem()).unwrap();
    assert_eq!(credentials.id.as_str(), id("ns", "sa"));
    assert!(
        credentials.not_before < SystemTime::now() && SystemTime::now() < credentials.not_after
    );
    assert_eq!(credentials.chain().len(), 2, "leaf and intermediate");

    let other = mesh.leaf(&id("ns", "sa"));
    assert!(matches!(
        Credentials::from_pem_key(&leaf.chain_pem(), &other.key_pem()),
        Err(TlsError::KeyMismatch)
    ));
    let two_ids = mesh.issuer.leaf(&LeafSpec {
        uris: vec![id("a", "b"), id("a", "c")],
        ..LeafSpec::good("unused")
    });
    assert!(matches!(
        Credentials::from_pem_key(&two_ids.chain_pem(), &two_ids.key_pem()),
        Err(TlsError::Svid(SvidError::MultipleUriSans { count: 2 }))
    ));
    let mut expired_spec = LeafSpec::good(&id("a", "b"));
    expired_spec.not_before = SystemTime::now() - Duration::from_secs(7200);
    expired_spec.not_after = SystemTime::now() - Duration::from_secs(60);
    let expired = mesh.issuer.leaf(&expired_spec);
    assert!(matches!(
        Credentials::from_pem_key(&expired.chain_pem(), &expired.key_pem()),
        Err(TlsError::Expired { .. })
    ));
    assert!(matches!(
        Credentials::from_pem_key("", &leaf.key_pem()),
        Err(TlsError::NoCertificates { .. })
    ));
    assert!(matches!(
        Credentials::from_pem_key(&leaf.chain_pem(), "not a key"),
        Err(TlsError::NoPrivateKey { .. })
    ));
    assert!(matches!(
        Credentials::from_pem_key(
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            &leaf.key_pem()
        ),
        Err(TlsError::Pem { .. })
    ));
}

#[test]
fn credentials_from_a_workload_key() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let other_key = WorkloadKey::generate().unwrap();
    let id = SpiffeId::workload(TD, "ns", "sa").unwrap();
    let issued = ca
        .sign_workload_csr(&key.csr_pem(&id).unwrap(), &id, Duration::from_secs(60))
        .unwrap();
    let credentials = Credentials::from_pem(&issued.chain_pem, &key).unwrap();
    assert_eq!(credentials.id, id);
    assert_eq!(credentials.not_after, issued.not_after);
    assert!(matches!(
        Credentials::from_pem(&issued.chain_pem, &other_key),
        Err(TlsError::KeyMismatch)
    ));

    let store = CertStore::new();
    assert_eq!((store.id(), store.not_after()), (None, None));
    store.install(credentials);
    assert_eq!(store.id(), Some(id));
    assert_eq!(store.not_after(), Some(issued.not_after));
}

#[test]
fn trust_bundles() {
    let mesh = Mesh::new();
    let bundle = TrustBundle::from_pem(&mesh.root.pem(), TD).unwrap();
    assert_eq!(bundle.trust_domain(), TD);
    assert_eq!(bundle.certificates().len(), 1);
    assert!(matches!(
        TrustBundle::from_pem("", TD),
        Err(TlsError::NoCertificates { .. })
    ));
    assert!(matches!(
        TrustBundle::from_pem(&mesh.root.pem(), "Not A Domain"),
        Err(TlsError::TrustDomain(_))
    ));
    let leaf = mesh.leaf(&id("a", "b"));
    let leaf_pem = crate::x509::certificate_pem(&leaf.chain[0]);
    assert!(matches!(
        TrustBundle::from_pem(&format!("{}{leaf_pem}", mesh.root.pem()), TD),
        Err(TlsError::BadRoot { index: 2, .. })
    ));
}

#[test]
fn peer_identity_needs_one_valid_uri_san() {
    let mesh = Mesh::new();
    let good = mesh.leaf(&id("a", "b"));
    assert_eq!(
        peer_identity(Some(&good.chain)).unwrap().as_str(),
        id("a", "b")
    );
    assert_eq!(peer_identity(None), None);
    assert_eq!(peer_identity(Some(&[])), None);
    let two = mesh.issuer.leaf(&LeafSpec {
        uris: vec![id("a", "b"), id("a", "c")],
        ..LeafSpec::good("unused")
    });
    assert_eq!(peer_identity(Some(&two.chain)), None);
    assert_eq!(
        peer_identity(Some(&[CertificateDer::from(&b"garbage"[..])])),
        None
    );
}

#[test]
fn failure_reasons_are_bounded() {
    use rustls::{CertificateError, Error};
    let cases = [
        (
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "unknown_ca",
        ),
        (
            Error::InvalidCertificate(CertificateError::Expired),
            "expired",
        ),
        (
            Error::InvalidCertificate(CertificateError::BadSignature),
            "bad_certificate",
        ),
        (Error::NoCertificatesPresented, "certificate_required"),
        (
            Error::AlertReceived(AlertDescription::UnknownCA),
            "unknown_ca",
        ),
        (
            Error::AlertReceived(AlertDescription::CertificateRequired),
            "certificate_required",
        ),
        (
            Error::AlertReceived(AlertDescription::CertificateUnknown),
            "bad_certificate",
        ),
        (
            Error::AlertReceived(AlertDescription::ProtocolVersion),
            "protocol_version",
        ),
        (
            Error::PeerIncompatible(rustls::PeerIncompatible::SupportedVersionsExtensionRequired),
            "protocol_version",
        ),
        (Error::DecryptError, "other"),
        (
            SvidError::Mismatch {
                presented: SpiffeId::parse("spiffe://a/x").unwrap(),
                expected: SpiffeId::parse("spiffe://a/y").unwrap(),
            }
            .into_rustls(),
            "spiffe_mismatch",
        ),
        (SvidError::NoUriSan.into_rustls(), "bad_certificate"),
    ];
    for (error, reason) in cases {
        assert_eq!(handshake_failure_reason(&error), reason, "{error:?}");
        assert!(HANDSHAKE_FAILURE_REASONS.contains(&reason));
    }
    let wrapped = io::Error::new(io::ErrorKind::InvalidData, Error::NoCertificatesPresented);
    assert_eq!(
        rustls_error(&wrapped),
        Some(&Error::NoCertificatesPresented)
    );
    assert_eq!(rustls_error(&io::Error::other("plain")), None);
}

#[tokio::test]
async fn trust_store_swaps_the_bundle_for_new_handshakes_and_spares_established_connections() {
    let old = Mesh::new();
    let new = Mesh::new();
    let both = TrustBundle::from_pem(&format!("{}{}", old.root.pem(), new.root.pem()), TD).unwrap();
    let server_id = id("default", "server");
    let expected = SpiffeId::parse(&server_id).unwrap();
    // One store under a server and a client config, as in a sidecar.
    let trust = TrustStore::new(old.bundle()).unwrap();
    let server = server_config_trusting(
        old.leaf(&server_id).store(),
        Arc::clone(&trust),
        ClientAuth::Required,
    )
    .unwrap();
    let old_client = client_config_trusting(
        Some(old.leaf(&id("default", "client")).store()),
        Arc::clone(&trust),
        &expected,
    )
    .unwrap();
    // A peer already issued under the new root (it trusts both).
    let new_client = client_config(
        Some(new.leaf(&id("default", "client")).store()),
        &both,
        &expected,
    )
    .unwrap();

    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let (mut established_server, mut established_client) = tokio::join!(
        accept(Arc::clone(&server), server_io),
        connect(Arc::clone(&old_client), client_io)
    );
    let (established_server, established_client) = (
        established_server.as_mut().unwrap(),
        established_client.as_mut().unwrap(),
    );
    ping_pong(established_server, established_client)
        .await
        .unwrap();

    let (server_result, _) = exchange(Arc::clone(&server), Arc::clone(&new_client)).await;
    assert!(server_result.is_err(), "the new root is not trusted yet");

    assert!(trust.install(both.clone()).unwrap(), "a new bundle");
    assert!(
        !trust.install(both.clone()).unwrap(),
        "the same bundle again"
    );
    let (server_result, client_result) =
        exchange(Arc::clone(&server), Arc::clone(&new_client)).await;
    server_result.expect("the server trusts the new root without a new config");
    client_result.unwrap();
    ping_pong(established_server, established_client)
        .await
        .expect("the connection made before the swap still works");

    // A server re-issued under the new root, reached through the client config built before.
    let new_server =
        server_config(new.leaf(&server_id).store(), &both, ClientAuth::Required).unwrap();
    let (_, client_result) = exchange(new_server, Arc::clone(&old_client)).await;
    client_result.expect("the client trusts the new root without a new config");

    // The old root leaves: its leaves are refused from then on.
    assert!(trust.install(new.bundle()).unwrap());
    let (server_result, _) = exchange(Arc::clone(&server), Arc::clone(&old_client)).await;
    assert!(server_result.is_err(), "the old root is no longer trusted");
    ping_pong(established_server, established_client)
        .await
        .expect("established connections are never re-verified");

    // Another trust domain is refused and changes nothing.
    let foreign = TrustBundle::from_pem(&old.root.pem(), "other.test").unwrap();
    let error = trust.install(foreign).unwrap_err();
    assert!(error.to_string().contains("other.test"), "{error}");
    assert_eq!(trust.bundle(), new.bundle());
}

#[test]
fn check_chain_accepts_only_chains_to_the_bundle() {
    let old = Mesh::new();
    let new = Mesh::new();
    let leaf = new.leaf(&id("default", "server"));
    new.bundle().check_chain(&leaf.chain).unwrap();
    let error = old.bundle().check_chain(&leaf.chain).unwrap_err();
    assert!(matches!(error, TlsError::Chain(_)), "{error}");
    assert!(matches!(
        old.bundle().check_chain(&[]),
        Err(TlsError::NoCertificates { .. })
    ));
}
