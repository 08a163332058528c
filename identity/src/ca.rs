//! The mesh certificate authority.
//!
//! Either a self-signed ECDSA P-256 root it generated, or an issuer loaded from files (a root,
//! or an intermediate under the user's own root: "bring your own intermediate"). It signs
//! workload CSRs as X.509-SVIDs for the identity the caller *authenticated* as; the CSR only
//! contributes its public key, after its self-signature proves the caller holds the private key.
//!
//! # Why no name constraints on the generated root
//! A SPIFFE root could be constrained to `spiffe://<trust-domain>` URIs, but webpki (rustls's
//! verifier) does not implement URI name constraints and fails closed on them: every leaf would
//! be rejected. The trust domain is enforced by the verifiers instead (see `tls`).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::spiffe::{self, SpiffeError};
use crate::x509::{self, display_time, PemListError};
use crate::SpiffeId;

/// The largest CSR accepted, in bytes of PEM. A P-256 CSR is under 1 KiB and an RSA-4096 one
/// under 4 KiB; anything bigger is abuse.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How far back a generated root's validity starts (clocks of other hosts may lag).
const ROOT_BACKDATE: Duration = Duration::from_secs(60 * 60);

/// How far back an issued certificate's validity starts, at most (clock skew between hosts).
/// Never more than a quarter of the lifetime, so a 1-minute certificate is not mostly in the
/// past.
const LEAF_BACKDATE: Duration = Duration::from_secs(60);

/// The smallest RSA modulus accepted in a CSR, in bits.
const MIN_RSA_BITS: usize = 2048;

/// Why the CA could not load or sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The trust domain is not a valid SPIFFE trust domain.
    #[error("invalid trust domain: {0}")]
    TrustDomain(#[source] SpiffeError),
    /// Generating a key failed (the system random source failed).
    #[error("generating a key failed: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// The system random source failed while drawing a serial number.
    #[error("the system random source failed")]
    Random,
    /// The issuer certificate file is not valid PEM.
    #[error("issuer certificate: invalid PEM: {reason}")]
    CertificatePem {
        /// The decoder's message.
        reason: String,
    },
    /// The issuer certificate file holds no `CERTIFICATE`.
    #[error("issuer certificate: no CERTIFICATE in the PEM text")]
    NoCertificate,
    /// The issuer certificate file holds more certificates than any real chain.
    #[error("issuer certificate: more than {max} certificates")]
    TooManyCertificates {
        /// The limit.
        max: usize,
    },
    /// A certificate of the issuer chain is not DER X.509, or its extensions are malformed.
    #[error("issuer chain certificate #{index} is not a valid X.509 certificate")]
    CertificateParse {
        /// Position in the file, from 1 (1 is the issuer).
        index: usize,
    },
    /// A certificate of the issuer chain is not a CA (basicConstraints cA is not true): it may
    /// not issue certificates.
    #[error("issuer chain certificate #{index} is not a CA certificate (basicConstraints cA is not true)")]
    NotACa {
        /// Position in the file, from 1 (1 is the issuer).
        index: usize,
    },
    /// A certificate of the issuer chain has a keyUsage without keyCertSign.
    #[error(
        "issuer chain certificate #{index} may not sign certificates (keyUsage lacks keyCertSign)"
    )]
    CannotSign {
        /// Position in the file, from 1 (1 is the issuer).
        index: usize,
    },
    /// A certificate of the issuer chain has expired.
    #[error("issuer chain certificate #{index} expired at {}", display_time(*not_after))]
    Expired {
        /// Position in the file, from 1 (1 is the issuer).
        index: usize,
        /// Its expiry.
        not_after: SystemTime,
    },
    /// A certificate of the issuer chain is not valid yet (or this host's clock is behind).
    #[error("issuer chain certificate #{index} is not valid before {}", display_time(*not_before))]
    NotYetValid {
        /// Position in the file, from 1 (1 is the issuer).
        index: usize,
        /// Its start.
        not_before: SystemTime,
    },
    /// A certificate of the issuer chain was not issued by the next one (wrong order, a missing
    /// intermediate, or an unrelated certificate).
    #[error("issuer chain certificate #{index} was not signed by certificate #{}", index + 1)]
    ChainBroken {
        /// Position in the file, from 1, of the certificate whose signature does not verify.
        index: usize,
    },
    /// The key file is not PEM or holds no private key.
    #[error("issuer key: no private key in the PEM text ({reason})")]
    KeyPem {
        /// The decoder's message.
        reason: String,
    },
    /// The key is in a format the ring backend cannot load.
    #[error(
        "issuer key: {format} keys are not supported; convert it to PKCS#8 with \
         `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key-pkcs8.pem`"
    )]
    UnsupportedKeyFormat {
        /// `"SEC1 (EC PRIVATE KEY)"` or `"PKCS#1 (RSA PRIVATE KEY)"`.
        format: &'static str,
    },
    /// The PKCS#8 key could not be loaded (unsupported algorithm or corrupt).
    #[error("issuer key: unusable: {0}")]
    UnsupportedKey(#[source] rcgen::Error),
    /// The key is not the issuer certificate's.
    #[error("issuer key does not match the issuer certificate's public key")]
    KeyMismatch,
    /// Certificates signed with this issuer would not name it byte for byte as its subject
    /// reads, so they would not chain to it.
    #[error(
        "issuer certificate: its subject cannot be reproduced in the certificates it signs \
         (a subject that repeats an attribute type, such as two OU or DC, or puts several in \
         one RDN); use an issuer whose subject names each attribute type once"
    )]
    IssuerNameNotReproducible,
    /// A certificate the issuer signs does not verify against the issuer's own root (the
    /// chain's name constraints, path length or extended key usages forbid it).
    #[error(
        "issuer certificate: the certificates it signs would not verify as a {usage} (checked \
         with a throwaway one): {reason}; check the chain's name constraints (they must permit \
         the URI spiffe://{trust_domain}), path length and extended key usages (serverAuth and \
         clientAuth)"
    )]
    IssuedUnverifiable {
        /// `TLS server` or `TLS client`.
        usage: &'static str,
        /// What the verifier said.
        reason: String,
        /// The trust domain.
        trust_domain: String,
    },
    /// The CSR is larger than [`MAX_CSR_LEN`].
    #[error("CSR is {len} bytes; the limit is {max}")]
    CsrTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CSR is not a PEM-encoded PKCS#10 request.
    #[error("CSR is malformed: {reason}")]
    CsrMalformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// The CSR's self-signature does not verify: the caller did not prove it holds the key.
    #[error("CSR signature does not verify")]
    CsrBadSignature,
    /// The CSR's key or signature algorithm is not accepted.
    #[error("CSR key is not accepted: {reason}")]
    CsrUnsupportedKey {
        /// What is wrong.
        reason: &'static str,
    },
    /// The CSR asks for another identity than the caller authenticated as.
    #[error("the CSR asks for {requested}, but the caller is {caller}")]
    CsrIdentityMismatch {
        /// What the CSR's URI SAN names (truncated).
        requested: String,
        /// Who the caller is.
        caller: SpiffeId,
    },
    /// The CSR asks for names besides the one SPIFFE ID (DNS names, addresses, emails, a
    /// second URI).
    #[error("the CSR asks for names besides its SPIFFE ID: {what}")]
    CsrExtraNames {
        /// Which kind of name.
        what: &'static str,
    },
    /// The identity to certify is in another trust domain than the CA's.
    #[error("cannot issue {id}: this CA serves trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The identity asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A zero lifetime.
    #[error("certificate lifetime must be positive")]
    InvalidLifetime,
    /// The issuer (or a certificate above it) has expired: nothing can be issued.
    #[error("the issuer expired at {}; load a new issuer", display_time(*not_after))]
    IssuerExpired {
        /// The earliest expiry in the issuer chain.
        not_after: SystemTime,
    },
    /// A DNS name for a server certificate is not a valid host name.
    #[error("invalid DNS name {name:?} for a server certificate")]
    InvalidDnsName {
        /// The name (truncated).
        name: String,
    },
    /// The further roots to trust (root rotation) are unusable.
    #[error("extra roots: {reason}")]
    ExtraRoots {
        /// What is wrong with them.
        reason: String,
    },
    /// rcgen failed to encode or sign the certificate.
    #[error("signing the certificate failed: {0}")]
    Signing(#[source] rcgen::Error),
}

impl CaError {
    /// Whether the CSR itself is at fault (too large, malformed, bad signature, unaccepted key):
    /// the caller should get an "invalid argument" answer rather than an internal error.
    pub fn is_invalid_csr(&self) -> bool {
        matches!(
            self,
            Self::CsrTooLarge { .. }
                | Self::CsrMalformed { .. }
                | Self::CsrBadSignature
                | Self::CsrUnsupportedKey { .. }
                | Self::CsrExtraNames { .. }
        )
    }
}

/// A certificate issued by the CA.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf first, then intermediates up to (not including) the root, PEM.
    pub chain_pem: String,
    /// Expiry.
    pub not_after: SystemTime,
}

/// The mesh CA: a self-signed root it generated, or a root/intermediate loaded from files.
#[derive(Debug)]
pub struct CertificateAuthority {
    trust_domain: String,
    /// Subject, key identifier and signing key of the issuer.
    issuer: Issuer<'static, KeyPair>,
    /// The issuer certificate first, then its chain; the last one is the trust anchor.
    chain: Vec<CertificateDer<'static>>,
    /// The issuer's start: nothing issued starts before it.
    not_before: SystemTime,
    /// The earliest expiry in the chain: nothing issued outlives it.
    not_after: SystemTime,
    /// Roots trusted besides the issuer's own (root rotation: the next root before the switch,
    /// the previous one after it). Never the issuer's root itself. Swapped atomically, so the
    /// control plane can reload them while it signs.
    extra_roots: arc_swap::ArcSwap<Vec<CertificateDer<'static>>>,
}

impl CertificateAuthority {
    /// A new self-signed root (ECDSA P-256) for `trust_domain`: CA, keyCertSign + cRLSign, valid
    /// from an hour ago for ten years.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        spiffe::validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(CaError::KeyGeneration)?;
        let now = SystemTime::now();
        let not_before = x509::clamp(now.checked_sub(ROOT_BACKDATE).unwrap_or(now));
        let not_after = x509::clamp(now.checked_add(ROOT_LIFETIME).unwrap_or(now));
        let mut params = CertificateParams::default();
        let serial = random_serial()?;
        // A unique name per root: during a root rotation the old and new roots sit in the same
        // bundle, and path building (and people) tell issuers apart by name first.
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Ficus");
        name.push(
            DnType::CommonName,
            format!("Ficus mesh root CA {}", hex(&serial.to_bytes()[..4])),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial);
        let cert = params.self_signed(&key).map_err(CaError::Signing)?;
        let der = cert.der().clone();
        // Read the times back as encoded (whole seconds).
        let (not_before, not_after) = match x509::parse_certificate(&der) {
            Some(parsed) => (
                x509::system_time(parsed.validity().not_before),
                x509::system_time(parsed.validity().not_after),
            ),
            None => (not_before, not_after),
        };
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            chain: vec![der],
            not_before,
            not_after,
            extra_roots: arc_swap::ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// Loads an issuer: `cert_pem` is the issuer certificate followed by its chain up to the
    /// root (a root alone is fine); `key_pem` the issuer's private key. Refuses an issuer that
    /// is not a CA, has expired, or whose key does not match.
    ///
    /// Every certificate of the chain must be a CA allowed to sign certificates, valid now,
    /// and signed by the next one. The key must be PKCS#8 (`PRIVATE KEY`).
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        spiffe::validate_trust_domain(trust_domain).map_err(CaError::TrustDomain)?;
        let chain = x509::certificates_from_pem(cert_pem).map_err(|error| match error {
            PemListError::Pem(reason) => CaError::CertificatePem { reason },
            PemListError::Empty => CaError::NoCertificate,
            PemListError::TooMany => CaError::TooManyCertificates {
                max: x509::MAX_CERTIFICATES,
            },
        })?;
        let (not_before, not_after) = check_issuer_chain(&chain, SystemTime::now())?;
        let key = load_key(key_pem)?;
        let issuer_cert =
            x509::parse_certificate(&chain[0]).ok_or(CaError::CertificateParse { index: 1 })?;
        if key.public_key_raw() != issuer_cert.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&chain[0], key)
            .map_err(|_| CaError::CertificateParse { index: 1 })?;
        let ca = Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            chain,
            not_before,
            not_after,
            extra_roots: arc_swap::ArcSwap::from_pointee(Vec::new()),
        };
        ca.check_issuer_name()?;
        Ok(ca)
    }

    /// Signs a throwaway certificate and checks that it names the issuer exactly as the
    /// issuer's own subject reads: rcgen rebuilds the issuer's name from the certificate, and
    /// a name it cannot reproduce (repeated attribute types) would make every certificate it
    /// signs fail to chain, at every sidecar, while the control plane starts fine.
    fn check_issuer_name(&self) -> Result<(), CaError> {
        let id = SpiffeId::workload(&self.trust_domain, "ficus-system", "issuer-check")
            .map_err(CaError::TrustDomain)?;
        let params = self.leaf_params(vec![uri_san(&id)?], Duration::from_secs(60), false)?;
        let key = KeyPair::generate().map_err(CaError::KeyGeneration)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Signing)?;
        let leaf = x509::parse_certificate(cert.der()).ok_or(CaError::IssuerNameNotReproducible)?;
        let issuer = self
            .chain
            .first()
            .and_then(|der| x509::parse_certificate(der))
            .ok_or(CaError::CertificateParse { index: 1 })?;
        if leaf.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(CaError::IssuerNameNotReproducible);
        }
        self.check_verifies(cert.der())
    }

    /// Checks that `leaf`, signed by this issuer, verifies against the issuer's root as every
    /// sidecar will verify it: as a TLS server and as a TLS client (webpki enforces name
    /// constraints, path lengths and the extended key usages of the whole chain, which the
    /// checks of [`check_issuer_chain`] do not).
    fn check_verifies(&self, leaf: &CertificateDer<'_>) -> Result<(), CaError> {
        let unverifiable = |usage, reason: String| CaError::IssuedUnverifiable {
            usage,
            reason,
            trust_domain: self.trust_domain.clone(),
        };
        let root = self.chain.last().ok_or(CaError::NoCertificate)?.clone();
        let bundle = crate::tls::TrustBundle::from_der(vec![root], &self.trust_domain)
            .map_err(|error| unverifiable("TLS server", error.to_string()))?;
        let mut chain = vec![leaf.clone().into_owned()];
        chain.extend(self.chain.iter().take(self.chain.len() - 1).cloned());
        bundle
            .check_chain(&chain)
            .map_err(|error| unverifiable("TLS server", error.to_string()))?;
        bundle
            .check_client_chain(&chain)
            .map_err(|error| unverifiable("TLS client", error.to_string()))
    }

    /// The issuer certificate and its chain, PEM (what `from_pem` takes).
    pub fn cert_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| x509::certificate_pem(der))
            .collect()
    }

    /// The issuer private key, PEM. Secret: store with mode 0600.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The trust anchor(s) for `ca.pem` and sidecars' `--ca-file`: the last certificate of the
    /// chain (the root).
    pub fn root_pem(&self) -> String {
        self.chain
            .last()
            .map(|der| x509::certificate_pem(der))
            .unwrap_or_default()
    }

    /// Sets the roots to trust besides the issuer's own, from PEM (empty text: none). Used
    /// during a root rotation: first the next root is added here (every workload learns to
    /// trust it when it renews), then the issuer is switched to it and the previous root
    /// moves here, until every certificate it issued has expired. Each must be a CA
    /// certificate; a copy of the issuer's root is dropped. Invalid text changes nothing.
    /// Takes `&self`: a shared CA can be given new extra roots while it signs.
    pub fn set_extra_roots(&self, pem: &str) -> Result<(), CaError> {
        if pem.trim().is_empty() {
            self.extra_roots.store(std::sync::Arc::new(Vec::new()));
            return Ok(());
        }
        let bundle =
            crate::tls::TrustBundle::from_pem(pem, &self.trust_domain).map_err(|error| {
                CaError::ExtraRoots {
                    reason: error.to_string(),
                }
            })?;
        let own = self.chain.last();
        let extra = bundle
            .certificates()
            .iter()
            .filter(|root| Some(*root) != own)
            .cloned()
            .collect();
        self.extra_roots.store(std::sync::Arc::new(extra));
        Ok(())
    }

    /// What workloads must trust: the issuer's root, then the extra roots, PEM. Sent with every
    /// certificate and written to `ca.pem`.
    pub fn bundle_pem(&self) -> String {
        self.chain
            .last()
            .into_iter()
            .chain(self.extra_roots.load().iter())
            .map(|der| x509::certificate_pem(der))
            .collect()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The earliest expiry in the issuer chain: no certificate issued outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a workload CSR (PEM). The certificate carries exactly one URI SAN, `id` — the
    /// identity the caller authenticated as; the CSR contributes only its public key (its
    /// self-signature is checked). A CSR that asks for another identity, or for further names
    /// (DNS, IP, email, a second URI), is refused rather than silently narrowed: it shows a
    /// misconfigured or hostile caller (RELIABILITY CP-3). One without names is fine. X.509-SVID: not a CA,
    /// digitalSignature (+ keyEncipherment for RSA keys), serverAuth + clientAuth, `lifetime`
    /// long (not after the issuer). Oversized or malformed CSRs are refused.
    ///
    /// Accepted keys: ECDSA P-256 and P-384, Ed25519, RSA of 2048 bits or more.
    pub fn sign_workload_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<IssuedCert, CaError> {
        if csr_pem.len() > MAX_CSR_LEN {
            return Err(CaError::CsrTooLarge {
                len: csr_pem.len(),
                max: MAX_CSR_LEN,
            });
        }
        self.check_trust_domain(id)?;
        let der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|_| {
                CaError::CsrMalformed {
                    reason: "not a PEM CERTIFICATE REQUEST",
                }
            })?;
        let csr = match X509CertificationRequest::from_der(&der) {
            Ok(([], csr)) => csr,
            Ok(_) => {
                return Err(CaError::CsrMalformed {
                    reason: "trailing bytes",
                })
            }
            Err(_) => {
                return Err(CaError::CsrMalformed {
                    reason: "not a DER PKCS#10 request",
                })
            }
        };
        match csr.verify_signature() {
            Ok(()) => {}
            Err(X509Error::SignatureUnsupportedAlgorithm) => {
                return Err(CaError::CsrUnsupportedKey {
                    reason: "unsupported signature algorithm",
                })
            }
            Err(_) => return Err(CaError::CsrBadSignature),
        }
        check_csr_names(&csr, id)?;
        let spki = &csr.certification_request_info.subject_pki;
        let is_rsa = check_csr_key(spki)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| {
            CaError::CsrUnsupportedKey {
                reason: "unsupported public key algorithm",
            }
        })?;
        let params = self.leaf_params(vec![uri_san(id)?], lifetime, is_rsa)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(CaError::Signing)?;
        Ok(self.issued(cert.der()))
    }

    /// A certificate and fresh key for a server of the mesh itself (the control plane's push
    /// endpoint): URI SAN `id`, plus DNS names and IP addresses. Returns the cert and the key
    /// PEM.
    pub fn issue_server(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<(IssuedCert, String), CaError> {
        self.check_trust_domain(id)?;
        let mut sans = vec![uri_san(id)?];
        for name in dns_names {
            if !is_dns_name(name) {
                return Err(CaError::InvalidDnsName {
                    name: name.chars().take(80).collect(),
                });
            }
            let ia5 = Ia5String::try_from(name.as_str())
                .map_err(|_| CaError::InvalidDnsName { name: name.clone() })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(CaError::KeyGeneration)?;
        let params = self.leaf_params(sans, lifetime, false)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Signing)?;
        // Its DNS names and addresses may fall outside the chain's name constraints, which
        // the throwaway workload certificate of `from_pem` did not carry.
        self.check_verifies(cert.der())?;
        Ok((self.issued(cert.der()), key.serialize_pem()))
    }

    fn check_trust_domain(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.trust_domain() == self.trust_domain {
            Ok(())
        } else {
            Err(CaError::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            })
        }
    }

    /// Parameters of an X.509-SVID leaf: `sans`, not a CA, digitalSignature (+ keyEncipherment
    /// for RSA, whose TLS key exchange may encrypt to it), serverAuth + clientAuth, a random
    /// serial, `lifetime` capped by the issuer chain's expiry.
    fn leaf_params(
        &self,
        sans: Vec<SanType>,
        lifetime: Duration,
        is_rsa: bool,
    ) -> Result<CertificateParams, CaError> {
        if lifetime.is_zero() {
            return Err(CaError::InvalidLifetime);
        }
        let now = SystemTime::now();
        if now >= self.not_after {
            return Err(CaError::IssuerExpired {
                not_after: self.not_after,
            });
        }
        let backdate = LEAF_BACKDATE.min(lifetime / 4);
        let not_before = now
            .checked_sub(backdate)
            .unwrap_or(now)
            .max(self.not_before);
        let not_after = now
            .checked_add(lifetime)
            .map_or(self.not_after, |end| end.min(self.not_after));

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if is_rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = x509::clamp(not_before).into();
        params.not_after = x509::clamp(not_after).into();
        Ok(params)
    }

    fn issued(&self, leaf: &CertificateDer<'_>) -> IssuedCert {
        let mut chain_pem = x509::certificate_pem(leaf);
        // Intermediates only: the anchor (last) is in every peer's bundle already.
        for intermediate in &self.chain[..self.chain.len().saturating_sub(1)] {
            chain_pem.push_str(&x509::certificate_pem(intermediate));
        }
        let not_after = x509::parse_certificate(leaf)
            .map(|cert| x509::system_time(cert.validity().not_after))
            .unwrap_or(self.not_after);
        IssuedCert {
            chain_pem,
            not_after,
        }
    }
}

/// Checks an issuer chain (issuer first): each certificate parses, is a CA that may sign
/// certificates, is valid at `now`, and is signed by the next; a self-signed top must verify.
/// Returns the issuer's start and the chain's earliest expiry.
fn check_issuer_chain(
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(SystemTime, SystemTime), CaError> {
    let mut parsed = Vec::with_capacity(chain.len());
    for (position, der) in chain.iter().enumerate() {
        parsed.push(
            x509::parse_certificate(der).ok_or(CaError::CertificateParse {
                index: position + 1,
            })?,
        );
    }
    let mut earliest_end: Option<SystemTime> = None;
    for (position, cert) in parsed.iter().enumerate() {
        let index = position + 1;
        match cert.basic_constraints() {
            Ok(Some(constraints)) if constraints.value.ca => {}
            Ok(_) => return Err(CaError::NotACa { index }),
            Err(_) => return Err(CaError::CertificateParse { index }),
        }
        match cert.key_usage() {
            Ok(Some(usage)) if !usage.value.key_cert_sign() => {
                return Err(CaError::CannotSign { index })
            }
            Ok(_) => {}
            Err(_) => return Err(CaError::CertificateParse { index }),
        }
        let not_before = x509::system_time(cert.validity().not_before);
        let not_after = x509::system_time(cert.validity().not_after);
        if not_after <= now {
            return Err(CaError::Expired { index, not_after });
        }
        if not_before > now {
            return Err(CaError::NotYetValid { index, not_before });
        }
        earliest_end = Some(earliest_end.map_or(not_after, |end| end.min(not_after)));
    }
    for (position, pair) in parsed.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        let names_match = child.issuer().as_raw() == parent.subject().as_raw();
        if !names_match || child.verify_signature(Some(parent.public_key())).is_err() {
            return Err(CaError::ChainBroken {
                index: position + 1,
            });
        }
    }
    if let Some(top) = parsed.last() {
        let self_issued = top.issuer().as_raw() == top.subject().as_raw();
        if self_issued && top.verify_signature(None).is_err() {
            return Err(CaError::ChainBroken {
                index: parsed.len(),
            });
        }
    }
    let issuer_start = parsed
        .first()
        .map(|cert| x509::system_time(cert.validity().not_before))
        .unwrap_or(now);
    Ok((issuer_start, earliest_end.unwrap_or(now)))
}

/// The names a CSR asks for: none, or exactly `id` as its one URI SAN.
fn check_csr_names(csr: &X509CertificationRequest<'_>, id: &SpiffeId) -> Result<(), CaError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let Some(extensions) = csr.requested_extensions() else {
        return Ok(());
    };
    let mut uris = 0;
    for extension in extensions {
        let ParsedExtension::SubjectAlternativeName(san) = extension else {
            continue;
        };
        for name in &san.general_names {
            match name {
                GeneralName::URI(uri) => {
                    uris += 1;
                    if uris > 1 {
                        return Err(CaError::CsrExtraNames {
                            what: "a second URI",
                        });
                    }
                    if *uri != id.as_str() {
                        return Err(CaError::CsrIdentityMismatch {
                            requested: uri.chars().take(200).collect(),
                            caller: id.clone(),
                        });
                    }
                }
                GeneralName::DNSName(_) => {
                    return Err(CaError::CsrExtraNames { what: "a DNS name" })
                }
                GeneralName::IPAddress(_) => {
                    return Err(CaError::CsrExtraNames {
                        what: "an IP address",
                    })
                }
                _ => {
                    return Err(CaError::CsrExtraNames {
                        what: "a name of another kind",
                    })
                }
            }
        }
    }
    Ok(())
}

/// Loads a PKCS#8 issuer key, naming the format when it is another one.
fn load_key(key_pem: &str) -> Result<KeyPair, CaError> {
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| CaError::KeyPem {
            reason: error.to_string(),
        })?;
    match key {
        PrivateKeyDer::Pkcs8(_) => KeyPair::try_from(&key).map_err(CaError::UnsupportedKey),
        PrivateKeyDer::Sec1(_) => Err(CaError::UnsupportedKeyFormat {
            format: "SEC1 (EC PRIVATE KEY)",
        }),
        PrivateKeyDer::Pkcs1(_) => Err(CaError::UnsupportedKeyFormat {
            format: "PKCS#1 (RSA PRIVATE KEY)",
        }),
        _ => Err(CaError::KeyPem {
            reason: "unknown private key format".to_owned(),
        }),
    }
}

/// Accepts ECDSA P-256/P-384, Ed25519 and RSA ≥ 2048 bits. Returns whether the key is RSA.
fn check_csr_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<bool, CaError> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|params| params.as_oid().ok());
        return match curve {
            Some(curve) if curve == OID_EC_P256 || curve == OID_NIST_EC_P384 => Ok(false),
            _ => Err(CaError::CsrUnsupportedKey {
                reason: "only the P-256 and P-384 curves are accepted",
            }),
        };
    }
    if *algorithm == OID_SIG_ED25519 {
        return Ok(false);
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => 0,
        };
        return if bits >= MIN_RSA_BITS {
            Ok(true)
        } else {
            Err(CaError::CsrUnsupportedKey {
                reason: "RSA keys must have at least 2048 bits",
            })
        };
    }
    Err(CaError::CsrUnsupportedKey {
        reason: "unsupported public key algorithm (use ECDSA P-256)",
    })
}

fn modulus_bits(modulus: &[u8]) -> usize {
    let significant: &[u8] = match modulus.iter().position(|byte| *byte != 0) {
        Some(start) => &modulus[start..],
        None => &[],
    };
    match significant.first() {
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn uri_san(id: &SpiffeId) -> Result<SanType, CaError> {
    Ia5String::try_from(id.as_str())
        .map(SanType::URI)
        .map_err(CaError::Signing)
}

/// A host name (or `*.`-wildcard) of letters, digits, `-` and `.`, at most 253 bytes.
fn is_dns_name(name: &str) -> bool {
    crate::is_dns_name(name.strip_prefix("*.").unwrap_or(name), false)
}

/// A random positive 16-byte serial (RFC 5280: positive, at most 20 bytes; CA/B Forum: at least
/// 64 random bits).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    crate::crypto_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Clear the sign bit and set the next one: positive, and always 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests;
