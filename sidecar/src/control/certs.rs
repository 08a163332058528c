//! The workload certificate: obtained from the control plane's CA with the join token,
//! renewed at ~70 % of its lifetime (with jitter), retried with backoff while renewal fails —
//! the current certificate keeps serving until it expires.
//!
//! Each answer also carries the trust bundle (the roots to trust; old and new during a root
//! rotation). It came over the control connection, which verified the control plane against
//! the roots in force, so it is authentic; it is put in force only when the certificate that
//! came with it chains to it, then the certificate is installed (the new roots first, so peers
//! issued under a new root are accepted as soon as we present ours). An empty bundle (an older
//! control plane) keeps the roots in force.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ficus_config::wire::certificates_client::CertificatesClient;
use ficus_config::wire::SignRequest;
use ficus_identity::csr::WorkloadKey;
use ficus_identity::tls::{Credentials, TrustBundle};

use super::{channel, ControlSettings};
use crate::mtls::MeshTls;
use crate::telemetry::metrics::Metrics;

/// Longest wait for a signature.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry bounds while obtaining or renewing fails.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Retry bound once the installed certificate has expired or is within `RETRY_MAX` of it:
/// the sidecar is not ready without one, so it asks more often.
const RETRY_MAX_EXPIRING: Duration = Duration::from_secs(5);

/// Keeps a valid certificate installed in [`MeshTls`].
#[derive(Debug)]
pub struct CertManager {
    settings: ControlSettings,
    tls: Arc<MeshTls>,
    metrics: Arc<Metrics>,
}

impl CertManager {
    /// A manager for `tls`'s identity.
    pub fn new(settings: ControlSettings, tls: Arc<MeshTls>, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            tls,
            metrics,
        }
    }

    /// Obtains, then renews, forever.
    pub async fn run(self) {
        let mut retry = RETRY_MIN;
        loop {
            let wait = match self.obtain().await {
                Ok(credentials) => {
                    let wait = renew_after(
                        credentials.0,
                        credentials.1,
                        SystemTime::now(),
                        rand::random(),
                    );
                    tracing::info!(id = %self.tls.id, renew_in = ?wait, "workload certificate installed");
                    if wait >= RETRY_MIN {
                        retry = RETRY_MIN;
                        ficus_net::wall::sleep_until(SystemTime::now() + wait).await;
                        continue;
                    }
                    // Due for renewal as soon as issued: its issuer expires within seconds, or
                    // the clocks disagree. Asking again at once would only repeat that.
                    tracing::warn!(id = %self.tls.id, not_after = ?credentials.1,
                        "the issued certificate is already due for renewal; asking again later");
                    retry
                }
                Err(error) => {
                    self.metrics.certificate_renewal_failed();
                    let expiry = self.tls.store.not_after();
                    tracing::warn!(%error, ?retry, ?expiry, "obtaining a workload certificate failed; retrying");
                    retry
                }
            };
            tokio::time::sleep(wait.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
            let expiring = self.tls.store.not_after().is_none_or(|not_after| {
                not_after
                    .duration_since(SystemTime::now())
                    .map_or(true, |left| left < RETRY_MAX)
            });
            let cap = if expiring {
                RETRY_MAX_EXPIRING
            } else {
                RETRY_MAX
            };
            retry = (retry * 2).min(cap);
        }
    }

    /// One CSR round trip; installs the certificate. Returns its (not_before, not_after).
    async fn obtain(&self) -> Result<(SystemTime, SystemTime), String> {
        let token = self
            .settings
            .token
            .as_deref()
            .ok_or("no --token-file")?
            .current();
        let key = WorkloadKey::generate().map_err(|e| format!("key generation: {e}"))?;
        // The bundle in force as the request goes out: a push may install a newer one while
        // it is signed, and the answer's (taken when it was signed) must not undo that.
        let bundle_before = self.tls.trust.bundle();
        let csr_pem = key.csr_pem(&self.tls.id).map_err(|e| format!("CSR: {e}"))?;
        let channel = channel::connect(&self.settings).await?;
        let mut client = CertificatesClient::with_origin(channel, self.settings.origin.clone());
        let mut request = tonic::Request::new(SignRequest { csr_pem });
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token holds characters not allowed in a header".to_owned())?;
        request.metadata_mut().insert("authorization", bearer);
        let response = tokio::time::timeout(SIGN_TIMEOUT, client.sign(request))
            .await
            .map_err(|_| "signing timed out".to_owned())?
            .map_err(|status| {
                format!(
                    "signing refused: {} ({:?})",
                    status.message(),
                    status.code()
                )
            })?
            .into_inner();
        let credentials = Credentials::from_pem(&response.certificate_chain_pem, &key)
            .map_err(|e| format!("the issued certificate is unusable: {e}"))?;
        let window = (credentials.not_before, credentials.not_after);
        install(
            &self.tls,
            credentials,
            &response.trust_bundle_pem,
            Some(&bundle_before),
        )?;
        let expiry = window
            .1
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics
            .certificate_expiry
            .set(i64::try_from(expiry).unwrap_or(i64::MAX));
        Ok(window)
    }
}

/// Puts a signing answer in force: the trust bundle that came with it (`bundle_pem`; empty:
/// keep the roots in force) once `credentials` are for our identity and chain to it, then the
/// certificate. Nothing changes when anything is wrong. When the roots in force are no longer
/// `asked_under` (a push installed newer ones while the request was signed), the answer's
/// bundle is older than them and is not installed: the certificate must chain to the roots in
/// force.
fn install(
    tls: &MeshTls,
    credentials: Credentials,
    bundle_pem: &str,
    asked_under: Option<&TrustBundle>,
) -> Result<(), String> {
    if credentials.id != tls.id {
        return Err(format!(
            "issued for {} instead of {}",
            credentials.id, tls.id
        ));
    }
    let pushed_meanwhile = asked_under.is_some_and(|before| *before != tls.trust.bundle());
    let bundle = if bundle_pem.trim().is_empty() || pushed_meanwhile {
        tls.trust.bundle()
    } else {
        TrustBundle::from_pem(bundle_pem, tls.trust_domain())
            .map_err(|e| format!("the trust bundle sent with the certificate: {e}"))?
    };
    bundle
        .check_chain(credentials.chain())
        .map_err(|e| format!("the issued certificate: {e}"))?;
    // Logs when the roots change.
    tls.trust
        .install(bundle)
        .map_err(|e| format!("the trust bundle sent with the certificate: {e}"))?;
    tls.store.install(credentials);
    Ok(())
}

/// How long to wait before renewing a certificate valid over `[not_before, not_after]`:
/// until 70 % of its lifetime, ±5 % jitter (`jitter` in 0..1), never negative.
pub fn renew_after(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let fraction = 0.65 + 0.10 * jitter.clamp(0.0, 1.0);
    let at = not_before + lifetime.mul_f64(fraction);
    at.duration_since(now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signing_answer_installs_its_bundle_only_with_a_certificate_that_chains_to_it() {
        use ficus_identity::ca::CertificateAuthority;
        use ficus_identity::tls::{TrustBundle, TrustStore};
        use ficus_identity::SpiffeId;
        let td = "cluster.local";
        let old = CertificateAuthority::generate(td).unwrap();
        let new = CertificateAuthority::generate(td).unwrap();
        let id = SpiffeId::workload(td, "shop", "web").unwrap();
        let trust = TrustStore::new(TrustBundle::from_pem(&old.root_pem(), td).unwrap()).unwrap();
        let tls = MeshTls::new(id.clone(), Arc::clone(&trust)).unwrap();
        let issue = |ca: &CertificateAuthority, id: &SpiffeId| {
            let key = WorkloadKey::generate().unwrap();
            let issued = ca
                .sign_workload_csr(&key.csr_pem(id).unwrap(), id, Duration::from_secs(3600))
                .unwrap();
            Credentials::from_pem(&issued.chain_pem, &key).unwrap()
        };
        let both = format!("{}{}", old.root_pem(), new.root_pem());

        // No bundle sent: the roots in force stay, the certificate must chain to them.
        install(&tls, issue(&old, &id), "", None).unwrap();
        assert!(tls.has_certificate());
        let error = install(&tls, issue(&new, &id), "", None).unwrap_err();
        assert!(
            error.contains("does not lead to the trust bundle"),
            "{error}"
        );

        // A bundle that does not trust the certificate sent with it changes nothing.
        let before = tls.store.not_after();
        let error = install(&tls, issue(&new, &id), &old.root_pem(), None).unwrap_err();
        assert!(error.contains("the issued certificate"), "{error}");
        assert_eq!(
            trust.bundle(),
            TrustBundle::from_pem(&old.root_pem(), td).unwrap()
        );
        assert_eq!(tls.store.not_after(), before);

        // Garbage, another trust domain, another identity: refused, nothing changes.
        let error = install(&tls, issue(&old, &id), "not pem", None).unwrap_err();
        assert!(error.contains("trust bundle"), "{error}");
        let other = SpiffeId::workload(td, "shop", "other").unwrap();
        let error = install(&tls, issue(&old, &other), &both, None).unwrap_err();
        assert!(error.contains("instead of"), "{error}");
        assert_eq!(trust.bundle().certificates().len(), 1);

        // The rotation bundle with a certificate under the new root: both in force.
        install(&tls, issue(&new, &id), &both, None).unwrap();
        assert_eq!(trust.bundle(), TrustBundle::from_pem(&both, td).unwrap());
        let presented = tls.store.current().unwrap();
        TrustBundle::from_pem(&new.root_pem(), td)
            .unwrap()
            .check_chain(presented.chain())
            .unwrap();

        // A signing answer that was asked for under an older bundle than the one a push has
        // put in force since (the old root removed) does not bring the old root back; its
        // certificate is installed when it chains to the roots in force.
        let asked_under = trust.bundle();
        let new_only = TrustBundle::from_pem(&new.root_pem(), td).unwrap();
        trust.install(new_only.clone()).unwrap();
        install(&tls, issue(&new, &id), &both, Some(&asked_under)).unwrap();
        assert_eq!(trust.bundle(), new_only, "the pushed bundle stays");
        let error = install(&tls, issue(&old, &id), &both, Some(&asked_under)).unwrap_err();
        assert!(error.contains("the issued certificate"), "{error}");
        assert_eq!(trust.bundle(), new_only);
    }

    #[test]
    fn renewal_at_about_70_percent() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(100);
        assert_eq!(renew_after(start, end, start, 0.5), Duration::from_secs(70));
        assert_eq!(renew_after(start, end, start, 0.0), Duration::from_secs(65));
        assert_eq!(renew_after(start, end, start, 1.0), Duration::from_secs(75));
        assert_eq!(
            renew_after(start, end, end, 0.5),
            Duration::ZERO,
            "overdue: now"
        );
    }
}
