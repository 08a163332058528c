//! A test PKI built with rcgen: roots, intermediates, and good and deliberately broken leaves.

use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::{CertStore, Credentials, TrustBundle};
use crate::x509;

/// The trust domain of the test mesh.
pub(crate) const TD: &str = "mesh.test";

/// A CA of the test PKI.
pub(crate) struct Authority {
    pub(crate) cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The certificates between this CA and its root, this CA first, root excluded.
    pub(crate) chain_to_root: Vec<CertificateDer<'static>>,
}

/// A leaf of the test PKI: its chain (leaf first, root excluded) and key.
pub(crate) struct Leaf {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: KeyPair,
}

/// What goes into a leaf; [`LeafSpec::good`] is a valid X.509-SVID.
#[derive(Clone)]
pub(crate) struct LeafSpec {
    pub(crate) uris: Vec<String>,
    pub(crate) dns: Vec<String>,
    pub(crate) is_ca: IsCa,
    pub(crate) key_usages: Vec<KeyUsagePurpose>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl LeafSpec {
    pub(crate) fn good(id: &str) -> Self {
        let now = SystemTime::now();
        Self {
            uris: vec![id.to_owned()],
            dns: Vec::new(),
            is_ca: IsCa::ExplicitNoCa,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(3600),
        }
    }
}

/// Parameters of a CA valid from an hour ago for a year.
pub(crate) fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
    params
}

impl Authority {
    /// A self-signed root.
    pub(crate) fn root(name: &str) -> Self {
        Self::root_with(ca_params(name)).0
    }

    /// A self-signed root from `params`, and its key PEM.
    pub(crate) fn root_with(params: CertificateParams) -> (Self, String) {
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let cert = params.self_signed(&key).unwrap().der().clone();
        (
            Self {
                cert,
                issuer: Issuer::new(params, key),
                chain_to_root: Vec::new(),
            },
            key_pem,
        )
    }

    /// An intermediate CA under this one.
    pub(crate) fn intermediate(&self, name: &str) -> Self {
        self.intermediate_with(ca_params(name)).0
    }

    /// An intermediate CA from `params`, and its key PEM.
    pub(crate) fn intermediate_with(&self, params: CertificateParams) -> (Self, String) {
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let cert = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let mut chain_to_root = vec![cert.clone()];
        chain_to_root.extend(self.chain_to_root.iter().cloned());
        (
            Self {
                cert,
                issuer: Issuer::new(params, key),
                chain_to_root,
            },
            key_pem,
        )
    }

    /// A leaf signed by this CA.
    pub(crate) fn leaf(&self, spec: &LeafSpec) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|uri| SanType::URI(Ia5String::try_from(uri.as_str()).unwrap()))
            .chain(
                spec.dns
                    .iter()
                    .map(|dns| SanType::DnsName(Ia5String::try_from(dns.as_str()).unwrap())),
            )
            .collect();
        params.is_ca = spec.is_ca;
        params.key_usages = spec.key_usages.clone();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        let key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let mut chain = vec![leaf];
        chain.extend(self.chain_to_root.iter().cloned());
        Leaf { chain, key }
    }

    /// This CA's certificate, PEM.
    pub(crate) fn pem(&self) -> String {
        x509::certificate_pem(&self.cert)
    }

    /// A bundle holding only this CA, in the test trust domain.
    pub(crate) fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.pem(), TD).unwrap()
    }
}

impl Leaf {
    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The chain, PEM.
    pub(crate) fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| x509::certificate_pem(der))
            .collect()
    }

    /// The key, PEM (PKCS#8).
    pub(crate) fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Checked credentials (panics if the leaf is not a valid SVID).
    pub(crate) fn credentials(&self) -> Credentials {
        Credentials::from_der(self.chain.clone(), self.private_key()).unwrap()
    }

    /// A store presenting this leaf, checked or not.
    pub(crate) fn store(&self) -> std::sync::Arc<CertStore> {
        CertStore::with_credentials(Credentials::unchecked(
            self.chain.clone(),
            self.private_key(),
        ))
    }
}

/// `spiffe://mesh.test/ns/<ns>/sa/<sa>`.
pub(crate) fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}
