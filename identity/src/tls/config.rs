//! The server and client configs for mesh traffic.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use super::verify::{SpiffeClientVerifier, SpiffeServerVerifier};
use super::{CertStore, TlsError, TrustBundle, TrustStore};
use crate::SpiffeId;

/// ALPN id of HTTP/2 between sidecars (pooled, multiplexed requests).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1: between sidecars only for a request that switches protocols
/// (WebSocket and other `Upgrade`s; one connection per switch), else other TLS clients.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN id of opaque TCP between sidecars: the receiving sidecar forwards the decrypted bytes to
/// its app instead of reading HTTP. A private id: no other client offers it.
pub const ALPN_OPAQUE_TCP: &[u8] = b"ficus-tcp";

/// ALPN protocols a server offers, in preference order: HTTP/2 between sidecars, HTTP/1.1 for
/// protocol switches and other TLS clients, opaque TCP between sidecars.
const SERVER_ALPN: [&[u8]; 3] = [ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE_TCP];

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Required and verified (mTLS): chain to the bundle, exactly one URI SAN, a SPIFFE ID in
    /// the bundle's trust domain, a leaf that is not a CA.
    Required,
    /// Asked for but not required; one that is presented is verified like [`Self::Required`]
    /// (the control plane's admin HTTPS API: admins log in with a certificate, other callers
    /// with a token).
    Optional,
    /// None asked (the control plane's signing endpoint: callers have no certificate yet and
    /// authenticate with a token).
    None,
}

/// Server config: TLS 1.3 only, certificate from `store`, ALPN `h2` then `http/1.1`.
///
/// With [`ClientAuth::Required`] a client without a certificate gets `certificate_required`, one
/// whose chain does not lead to the bundle gets `unknown_ca`, and one that breaks the SPIFFE
/// rules or is in another trust domain gets `certificate_unknown`; each is logged with a
/// bounded reason. No session resumption (see the module docs).
pub fn server_config(
    store: Arc<CertStore>,
    bundle: &TrustBundle,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_trusting(store, TrustStore::new(bundle.clone())?, client_auth)
}

/// [`server_config`] over a [`TrustStore`]: client certificates are verified against the
/// bundle in force at each handshake, so a bundle installed later (root rotation) applies to
/// every new connection without rebuilding the config.
pub fn server_config_trusting(
    store: Arc<CertStore>,
    trust: Arc<TrustStore>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crate::crypto_provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?;
    let builder = match client_auth {
        ClientAuth::Required | ClientAuth::Optional => {
            let mandatory = client_auth == ClientAuth::Required;
            builder.with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(
                trust, provider, mandatory,
            )))
        }
        ClientAuth::None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = SERVER_ALPN
        .iter()
        .map(|protocol| protocol.to_vec())
        .collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client config: TLS 1.3 only, presenting `store`'s certificate when given, verifying that the
/// server chains to the bundle and that its single URI SAN equals `expected` (rustls/webpki do
/// not check URI SANs; this does). ALPN `h2`.
///
/// The server name passed to the connector is not checked against the certificate (the identity
/// is the URI SAN), so any syntactically valid `ServerName` works, such as the endpoint's IP.
/// A wrong identity fails with "server presented X, expected Y"; a chain from another root with
/// "unknown issuer for trust domain T". No session resumption (see the module docs).
pub fn client_config(
    store: Option<Arc<CertStore>>,
    bundle: &TrustBundle,
    expected: &SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_trusting(store, TrustStore::new(bundle.clone())?, expected)
}

/// [`client_config`] over a [`TrustStore`]: the server's chain is verified against the bundle
/// in force at each handshake (root rotation without rebuilding the config).
pub fn client_config_trusting(
    store: Option<Arc<CertStore>>,
    trust: Arc<TrustStore>,
    expected: &SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crate::crypto_provider();
    let verifier = SpiffeServerVerifier::new(trust, expected.clone(), Arc::clone(&provider));
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match store {
        Some(store) => builder.with_client_cert_resolver(store),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A copy of `config` that offers only `protocol` by ALPN (such as [`ALPN_HTTP1`] or
/// [`ALPN_OPAQUE_TCP`]), with the same certificate, verifier and trust store. Build it once per
/// peer, not per connection.
pub fn with_alpn(config: &ClientConfig, protocol: &[u8]) -> Arc<ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![protocol.to_vec()];
    Arc::new(config)
}
