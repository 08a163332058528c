use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, UnixTime};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::csr::WorkloadKey;
use crate::test_pki::{ca_params, Authority, LeafSpec, TD};
use crate::tls::{Credentials, SvidError};
use crate::x509::{certificate_pem, certificates_from_pem, parse_certificate, pem_encode};

const HOUR: Duration = Duration::from_secs(3600);

fn workload(sa: &str) -> SpiffeId {
    SpiffeId::workload(TD, "default", sa).unwrap()
}

fn csr_for(key: &WorkloadKey, sa: &str) -> String {
    key.csr_pem(&workload(sa)).unwrap()
}

/// Everything the tests look at in an issued leaf.
#[derive(Debug)]
struct Leaf {
    uris: Vec<String>,
    other_sans: usize,
    is_ca: Option<bool>,
    digital_signature: bool,
    key_encipherment: bool,
    key_cert_sign: bool,
    server_auth: bool,
    client_auth: bool,
    serial: Vec<u8>,
    has_authority_key_id: bool,
    not_before: SystemTime,
    not_after: SystemTime,
}

fn inspect(chain_pem: &str) -> (Leaf, Vec<CertificateDer<'static>>) {
    let chain = certificates_from_pem(chain_pem).unwrap();
    let cert = parse_certificate(&chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect::<Vec<_>>();
    let other_sans = san.value.general_names.len() - uris.len();
    let usage = cert.key_usage().unwrap().unwrap().value;
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    let leaf = Leaf {
        uris,
        other_sans,
        is_ca: cert.basic_constraints().unwrap().map(|bc| bc.value.ca),
        digital_signature: usage.digital_signature(),
        key_encipherment: usage.key_encipherment(),
        key_cert_sign: usage.key_cert_sign(),
        server_auth: eku.server_auth,
        client_auth: eku.client_auth,
        serial: cert.raw_serial().to_vec(),
        has_authority_key_id: cert
            .iter_extensions()
            .any(|ext| ext.oid == x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER),
        not_before: crate::x509::system_time(cert.validity().not_before),
        not_after: crate::x509::system_time(cert.validity().not_after),
    };
    drop(cert);
    (leaf, chain)
}

/// Verifies `chain` (leaf first) up to `root_pem` the way the client verifier does.
fn chains_to(chain: &[CertificateDer<'static>], root_pem: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    for root in certificates_from_pem(root_pem).unwrap() {
        roots.add(root).unwrap();
    }
    let leaf = rustls::server::ParsedCertificate::try_from(&chain[0])?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots,
        &chain[1..],
        UnixTime::now(),
        crate::crypto_provider()
            .signature_verification_algorithms
            .all,
    )
}

#[test]
fn generated_root() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    assert_eq!(ca.trust_domain(), TD);
    assert_eq!(
        ca.cert_pem(),
        ca.root_pem(),
        "a generated root is its own chain"
    );
    let root = certificates_from_pem(&ca.root_pem()).unwrap();
    let cert = parse_certificate(&root[0]).unwrap();
    assert!(cert.is_ca());
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        (9 * 365 * 24 * 3600..11 * 365 * 24 * 3600).contains(&lifetime),
        "{lifetime}"
    );
    cert.verify_signature(None).unwrap();
    assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));

    // Two roots never share a name: path building tells them apart during a rotation.
    let other = CertificateAuthority::generate(TD).unwrap();
    let other_root = certificates_from_pem(&other.root_pem()).unwrap();
    let other_cert = parse_certificate(&other_root[0]).unwrap();
    assert_ne!(cert.subject().to_string(), other_cert.subject().to_string());

    assert!(matches!(
        CertificateAuthority::generate("Bad Domain"),
        Err(CaError::TrustDomain(_))
    ));
}

#[test]
fn generated_root_survives_a_restart() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let reloaded = CertificateAuthority::from_pem(TD, &ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(reloaded.root_pem(), ca.root_pem());
    assert_eq!(reloaded.cert_pem(), ca.cert_pem());
    let key = WorkloadKey::generate().unwrap();
    let issued = reloaded
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), HOUR)
        .unwrap();
    let (_, chain) = inspect(&issued.chain_pem);
    assert_eq!(chain.len(), 1, "the root is not sent");
    chains_to(&chain, &ca.root_pem()).unwrap();
    Credentials::from_pem(&issued.chain_pem, &key).unwrap();
}

#[test]
fn issued_certificates_are_x509_svids() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let before = SystemTime::now();
    let issued = ca
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), 24 * HOUR)
        .unwrap();
    let (leaf, chain) = inspect(&issued.chain_pem);
    assert_eq!(leaf.uris, vec![workload("web").to_string()]);
    assert_eq!(leaf.other_sans, 0);
    assert_eq!(leaf.is_ca, Some(false));
    assert!(leaf.digital_signature && !leaf.key_encipherment && !leaf.key_cert_sign);
    assert!(leaf.server_auth && leaf.client_auth);
    assert!(leaf.has_authority_key_id);
    assert_eq!(leaf.serial.len(), 16);
    assert_eq!(leaf.serial[0] & 0x80, 0, "serials are positive");
    assert_eq!(issued.not_after, leaf.not_after);
    let lifetime = leaf.not_after.duration_since(before).unwrap();
    assert!(
        lifetime > 24 * HOUR - Duration::from_secs(5)
            && lifetime <= 24 * HOUR + Duration::from_secs(5)
    );
    assert!(
        leaf.not_before <= before
            && before.duration_since(leaf.not_before).unwrap() <= Duration::from_secs(61)
    );
    chains_to(&chain, &ca.root_pem()).unwrap();
    crate::tls::check_svid(&chain[0]).unwrap();

    // Serials differ between certificates.
    let again = ca
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), HOUR)
        .unwrap();
    assert_ne!(inspect(&again.chain_pem).0.serial, leaf.serial);
}

#[test]
fn short_lifetimes_are_not_mostly_backdated() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let before = SystemTime::now();
    let issued = ca
        .sign_workload_csr(
            &csr_for(&key, "web"),
            &workload("web"),
            Duration::from_secs(60),
        )
        .unwrap();
    let (leaf, _) = inspect(&issued.chain_pem);
    assert!(before.duration_since(leaf.not_before).unwrap_or_default() <= Duration::from_secs(16));
    assert!(leaf.not_after.duration_since(before).unwrap() >= Duration::from_secs(58));
}

#[test]
fn the_identity_comes_from_the_caller_and_a_csr_asking_for_more_is_refused() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let key = WorkloadKey::generate().unwrap();
    // The CSR asks for B; the caller authenticated as A: refused, nothing issued.
    let error = ca
        .sign_workload_csr(&csr_for(&key, "b"), &workload("a"), HOUR)
        .unwrap_err();
    assert!(
        matches!(&error, CaError::CsrIdentityMismatch { requested, .. } if *requested == workload("b").to_string()),
        "{error}"
    );
    assert!(
        !error.is_invalid_csr(),
        "a permission matter, not a malformed CSR"
    );
    // Asking for A itself is what a sidecar does.
    let issued = ca
        .sign_workload_csr(&csr_for(&key, "a"), &workload("a"), HOUR)
        .unwrap();
    let (leaf, _) = inspect(&issued.chain_pem);
    assert_eq!(leaf.uris, vec![workload("a").to_string()]);

    // A greedy CSR: further SANs, CA, certificate signing.
    let greedy_key = KeyPair::generate().unwrap();
    let greedy = |sans: Vec<SanType>, ca: bool| {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        }
        params
            .serialize_request(&greedy_key)
            .unwrap()
            .pem()
            .unwrap()
    };
    let own = || SanType::URI(Ia5String::try_from(workload("a").to_string()).unwrap());
    for sans in [
        vec![
            own(),
            SanType::DnsName(Ia5String::try_from("evil.example").unwrap()),
        ],
        vec![
            own(),
            SanType::URI(Ia5String::try_from("spiffe://other.test/ns/x/sa/y").unwrap()),
        ],
        vec![own(), SanType::IpAddress("10.0.0.1".parse().unwrap())],
    ] {
        let error = ca
            .sign_workload_csr(&greedy(sans, false), &workload("a"), HOUR)
            .unwrap_err();
        assert!(matches!(error, CaError::CsrExtraNames { .. }), "{error}");
        assert!(error.is_invalid_csr());
    }
    // Asking to be a CA is not honoured: the leaf is an SVID all the same.
    for sans in [vec![own()], Vec::new()] {
        let issued = ca
            .sign_workload_csr(&greedy(sans, true), &workload("a"), HOUR)
            .unwrap();
        let (leaf, _) = inspect(&issued.chain_pem);
        assert_eq!(leaf.uris, vec![workload("a").to_string()]);
        assert_eq!(leaf.other_sans, 0);
        assert_eq!(leaf.is_ca, Some(false));
        assert!(!leaf.key_cert_sign);
    }
}

#[test]
fn bad_csrs_are_refused_each_with_its_own_error() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let good = csr_for(&key, "web");
    let id = workload("web");

    let oversized = format!("{good}{}", " ".repeat(MAX_CSR_LEN));
    let error = ca.sign_workload_csr(&oversized, &id, HOUR).unwrap_err();
    assert!(
        matches!(
            error,
            CaError::CsrTooLarge {
                max: MAX_CSR_LEN,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.is_invalid_csr());

    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let error = ca.sign_workload_csr(garbage, &id, HOUR).unwrap_err();
        assert!(
            matches!(error, CaError::CsrMalformed { .. }),
            "{garbage:?}: {error}"
        );
        assert!(error.is_invalid_csr());
    }
    let not_der = pem_encode("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00");
    let error = ca.sign_workload_csr(&not_der, &id, HOUR).unwrap_err();
    assert!(matches!(error, CaError::CsrMalformed { .. }), "{error}");

    // Flip a bit of the signature: still a well-formed request, but not signed by its key.
    let mut der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    let error = ca.sign_workload_csr(&tampered, &id, HOUR).unwrap_err();
    assert!(matches!(error, CaError::CsrBadSignature), "{error}");
    assert!(error.is_invalid_csr());

    // Trailing bytes after the request.
    let mut der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    der.push(0);
    let error = ca
        .sign_workload_csr(&pem_encode("CERTIFICATE REQUEST", &der), &id, HOUR)
        .unwrap_err();
    assert!(matches!(error, CaError::CsrMalformed { .. }), "{error}");

    let error = ca
        .sign_workload_csr(
            &good,
            &SpiffeId::workload("other.test", "a", "b").unwrap(),
            HOUR,
        )
        .unwrap_err();
    assert!(
        matches!(error, CaError::ForeignTrustDomain { .. }),
        "{error}"
    );
    assert!(!error.is_invalid_csr());

    let error = ca
        .sign_workload_csr(&good, &id, Duration::ZERO)
        .unwrap_err();
    assert!(matches!(error, CaError::InvalidLifetime), "{error}");
}

#[test]
fn rsa_keys_get_key_encipherment_and_ed25519_keys_do_not() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let rsa = KeyPair::from_pem(include_str!("testdata/rsa-2048.pem")).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&rsa)
        .unwrap()
        .pem()
        .unwrap();
    let issued = ca.sign_workload_csr(&csr, &workload("rsa"), HOUR).unwrap();
    let (leaf, chain) = inspect(&issued.chain_pem);
    assert!(leaf.digital_signature && leaf.key_encipherment);
    chains_to(&chain, &ca.root_pem()).unwrap();

    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&ed)
        .unwrap()
        .pem()
        .unwrap();
    let issued = ca.sign_workload_csr(&csr, &workload("ed"), HOUR).unwrap();
    let (leaf, chain) = inspect(&issued.chain_pem);
    assert!(leaf.digital_signature && !leaf.key_encipherment);
    chains_to(&chain, &ca.root_pem()).unwrap();
}

#[test]
fn an_intermediate_from_files_signs_and_sends_itself_along() {
    let root = Authority::root("customer root");
    let (intermediate, key_pem) = root.intermediate_with(ca_params("customer intermediate"));
    let cert_pem = format!("{}{}", intermediate.pem(), root.pem());
    let ca = CertificateAuthority::from_pem(TD, &cert_pem, &key_pem).unwrap();
    assert_eq!(ca.root_pem(), root.pem());
    assert_eq!(ca.cert_pem(), cert_pem);

    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), HOUR)
        .unwrap();
    let (_, chain) = inspect(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(chain[1], intermediate.cert);
    chains_to(&chain, &ca.root_pem()).unwrap();
    assert!(chains_to(&chain, &Authority::root("customer root").pem()).is_err());

    // An intermediate alone is its own trust anchor.
    let alone = CertificateAuthority::from_pem(TD, &intermediate.pem(), &key_pem).unwrap();
    assert_eq!(alone.root_pem(), intermediate.pem());
}

/// An issuer whose subject repeats an attribute type (two OUs here, common in enterprise
/// PKI) cannot be reproduced by rcgen in what it signs, so nothing it signed would chain: it
/// is refused when loaded, not discovered at every sidecar.
#[test]
fn an_issuer_whose_name_cannot_be_reproduced_is_refused() {
    let root = Authority::root("customer root");
    let mut params = ca_params("customer intermediate");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "a");
    params
        .distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 11]), "b");
    let (intermediate, key_pem) = root.intermediate_with(params);
    let cert_pem = format!("{}{}", intermediate.pem(), root.pem());
    let Err(error) = CertificateAuthority::from_pem(TD, &cert_pem, &key_pem) else {
        panic!("an issuer whose name cannot be reproduced was loaded");
    };
    assert!(
        matches!(error, CaError::IssuerNameNotReproducible),
        "{error}"
    );
}

#[test]
fn issued_lifetime_is_capped_by_the_issuer() {
    let root = Authority::root("root");
    let mut params = ca_params("short-lived intermediate");
    let issuer_end = SystemTime::now() + HOUR;
    params.not_after = issuer_end.into();
    let (intermediate, key_pem) = root.intermediate_with(params);
    let ca = CertificateAuthority::from_pem(
        TD,
        &format!("{}{}", intermediate.pem(), root.pem()),
        &key_pem,
    )
    .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), 24 * HOUR)
        .unwrap();
    assert!(issued.not_after <= issuer_end, "capped by the issuer");
    assert!(issued.not_after + Duration::from_secs(2) >= issuer_end);
    assert!(ca.not_after() <= issuer_end);

    // The root above the issuer expires first: that caps too.
    let mut root_params = ca_params("short-lived root");
    let root_end = SystemTime::now() + 2 * HOUR;
    root_params.not_after = root_end.into();
    let (short_root, _) = Authority::root_with(root_params);
    let (intermediate, key_pem) = short_root.intermediate_with(ca_params("long intermediate"));
    let ca = CertificateAuthority::from_pem(
        TD,
        &format!("{}{}", intermediate.pem(), short_root.pem()),
        &key_pem,
    )
    .unwrap();
    let issued = ca
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), 24 * HOUR)
        .unwrap();
    assert!(issued.not_after <= root_end);
}

#[test]
fn unusable_issuers_are_refused() {
    let root = Authority::root("root");
    let (intermediate, key_pem) = root.intermediate_with(ca_params("intermediate"));
    let chain_pem = format!("{}{}", intermediate.pem(), root.pem());

    // Not a CA: a workload certificate and its key.
    let leaf = intermediate.leaf(&LeafSpec::good(workload("web").as_ref()));
    let error = CertificateAuthority::from_pem(TD, &leaf.chain_pem(), &leaf.key_pem()).unwrap_err();
    assert!(matches!(error, CaError::NotACa { index: 1 }), "{error}");

    // Expired.
    let mut expired = ca_params("expired intermediate");
    expired.not_before = (SystemTime::now() - 48 * HOUR).into();
    expired.not_after = (SystemTime::now() - HOUR).into();
    let (old, old_key) = root.intermediate_with(expired);
    let error =
        CertificateAuthority::from_pem(TD, &format!("{}{}", old.pem(), root.pem()), &old_key)
            .unwrap_err();
    assert!(
        matches!(error, CaError::Expired { index: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("expired at"), "{error}");

    // Not valid yet.
    let mut future = ca_params("future intermediate");
    future.not_before = (SystemTime::now() + HOUR).into();
    let (future, future_key) = root.intermediate_with(future);
    let error = CertificateAuthority::from_pem(TD, &future.pem(), &future_key).unwrap_err();
    assert!(
        matches!(error, CaError::NotYetValid { index: 1, .. }),
        "{error}"
    );

    // The key of another CA.
    let (_, other_key) = root.intermediate_with(ca_params("other"));
    let error = CertificateAuthority::from_pem(TD, &chain_pem, &other_key).unwrap_err();
    assert!(matches!(error, CaError::KeyMismatch), "{error}");

    // A chain that does not chain: the intermediate followed by an unrelated root.
    let stranger = Authority::root("root");
    let error = CertificateAuthority::from_pem(
        TD,
        &format!("{}{}", intermediate.pem(), stranger.pem()),
        &key_pem,
    )
    .unwrap_err();
    assert!(
        matches!(error, CaError::ChainBroken { index: 1 }),
        "{error}"
    );

    // A CA that may not sign certificates.
    let mut no_signing = ca_params("crl only");
    no_signing.key_usages = vec![KeyUsagePurpose::CrlSign];
    let (crl_only, crl_key) = root.intermediate_with(no_signing);
    let error = CertificateAuthority::from_pem(TD, &crl_only.pem(), &crl_key).unwrap_err();
    assert!(matches!(error, CaError::CannotSign { index: 1 }), "{error}");

    // Intermediates that pass every check above but whose certificates webpki would refuse:
    // a name constraint the certificates it signs fall outside, and server-only extended key usage
    // (sidecars would take it as a server and refuse it as a client).
    let mut constrained = ca_params("constrained intermediate");
    constrained.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DirectoryName({
            let mut name = rcgen::DistinguishedName::new();
            name.push(rcgen::DnType::OrganizationName, "someone else");
            name
        })],
        excluded_subtrees: Vec::new(),
    });
    let mut server_only = ca_params("server-only intermediate");
    server_only.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    for (params, usage) in [(constrained, "TLS server"), (server_only, "TLS client")] {
        let (cert, key) = root.intermediate_with(params);
        let chain = format!("{}{}", cert.pem(), root.pem());
        let error = CertificateAuthority::from_pem(TD, &chain, &key).unwrap_err();
        assert!(
            matches!(&error, CaError::IssuedUnverifiable { usage: u, .. } if *u == usage),
            "{error}"
        );
    }

    // Key formats and garbage.
    let error =
        CertificateAuthority::from_pem(TD, &chain_pem, include_str!("testdata/ec-sec1.pem"))
            .unwrap_err();
    assert!(
        matches!(error, CaError::UnsupportedKeyFormat { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("openssl pkcs8 -topk8"),
        "{error}"
    );
    let error = CertificateAuthority::from_pem(TD, &chain_pem, "no key here").unwrap_err();
    assert!(matches!(error, CaError::KeyPem { .. }), "{error}");
    let error = CertificateAuthority::from_pem(TD, "no certificate", &key_pem).unwrap_err();
    assert!(matches!(error, CaError::NoCertificate), "{error}");
    let garbage = certificate_pem(b"not DER");
    let error = CertificateAuthority::from_pem(TD, &garbage, &key_pem).unwrap_err();
    assert!(
        matches!(error, CaError::CertificateParse { index: 1 }),
        "{error}"
    );
    let error = CertificateAuthority::from_pem("Bad", &chain_pem, &key_pem).unwrap_err();
    assert!(matches!(error, CaError::TrustDomain(_)), "{error}");
}

#[test]
fn server_certificates_for_the_control_plane() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let id = SpiffeId::parse(&format!("spiffe://{TD}/ficus/control")).unwrap();
    let (issued, key_pem) = ca
        .issue_server(
            &id,
            &["control.example".to_owned(), "localhost".to_owned()],
            &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            HOUR,
        )
        .unwrap();
    let (leaf, chain) = inspect(&issued.chain_pem);
    assert_eq!(leaf.uris, vec![id.to_string()]);
    assert_eq!(leaf.other_sans, 4);
    assert_eq!(leaf.is_ca, Some(false));
    chains_to(&chain, &ca.root_pem()).unwrap();
    let credentials = Credentials::from_pem_key(&issued.chain_pem, &key_pem).unwrap();
    assert_eq!(credentials.id, id);

    for bad in [
        "",
        "under_score.example",
        "-lead.example",
        "a..b",
        "spaces are bad",
    ] {
        let error = ca
            .issue_server(&id, &[bad.to_owned()], &[], HOUR)
            .unwrap_err();
        assert!(
            matches!(error, CaError::InvalidDnsName { .. }),
            "{bad:?}: {error}"
        );
    }
    let foreign = SpiffeId::parse("spiffe://other.test/ficus/control").unwrap();
    assert!(matches!(
        ca.issue_server(&foreign, &[], &[], HOUR),
        Err(CaError::ForeignTrustDomain { .. })
    ));

    // An issuer whose DNS name constraints leave out `localhost`: workload certificates (URI
    // only) are fine, the control plane's own server certificate would not verify.
    let root = Authority::root("root");
    let mut constrained = ca_params("dns-constrained intermediate");
    constrained.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName("example.com".into())],
        excluded_subtrees: Vec::new(),
    });
    let (cert, key) = root.intermediate_with(constrained);
    let ca =
        CertificateAuthority::from_pem(TD, &format!("{}{}", cert.pem(), root.pem()), &key).unwrap();
    let error = ca
        .issue_server(&id, &["localhost".to_owned()], &[], HOUR)
        .unwrap_err();
    assert!(
        matches!(error, CaError::IssuedUnverifiable { .. }),
        "{error}"
    );
}

#[test]
fn svid_rules_apply_to_what_the_ca_issues() {
    // Whatever the CA issues passes the same checks the verifiers apply.
    let ca = CertificateAuthority::generate(TD).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), HOUR)
        .unwrap();
    let chain = certificates_from_pem(&issued.chain_pem).unwrap();
    assert_eq!(crate::tls::check_svid(&chain[0]), Ok(workload("web")));
    assert_eq!(
        crate::tls::check_svid(&CertificateDer::from(&b"junk"[..])),
        Err(SvidError::Malformed {
            what: "not DER X.509"
        })
    );
}

#[test]
fn fuzz_entry_points_accept_the_seed_corpus() {
    let key = WorkloadKey::generate().unwrap();
    let ca = CertificateAuthority::generate(TD).unwrap();
    let issued = ca
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), HOUR)
        .unwrap();
    let cert = certificates_from_pem(&issued.chain_pem).unwrap().remove(0);
    let other_domain_csr = key
        .csr_pem(&SpiffeId::workload("fuzz.example", "x", "y").unwrap())
        .unwrap();
    for seed in [
        &b""[..],
        b"spiffe://td/a",
        b"spiffe://td/../a",
        b"\xff\xfe",
        other_domain_csr.as_bytes(),
        issued.chain_pem.as_bytes(),
        cert.as_ref(),
    ] {
        crate::fuzz::spiffe_id(seed);
        crate::fuzz::csr(seed);
        crate::fuzz::certificate(seed);
    }
    // The corpus files (seeds and crashers) of every identity target go through all three.
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut files = 0;
    for target in ["spiffe_id", "csr", "certificate"] {
        for entry in std::fs::read_dir(corpus.join(target)).expect("a corpus directory") {
            let seed = std::fs::read(entry.expect("a corpus entry").path()).expect("a seed");
            crate::fuzz::spiffe_id(&seed);
            crate::fuzz::csr(&seed);
            crate::fuzz::certificate(&seed);
            files += 1;
        }
    }
    assert!(files >= 3, "the identity corpus is there");
}

proptest! {
    #[test]
    fn arbitrary_csr_text_never_panics(text in "\\PC{0,300}") {
        let ca = shared_ca();
        let _ = ca.sign_workload_csr(&text, &workload("web"), HOUR);
    }

    #[test]
    fn arbitrary_csr_der_never_panics(der in prop::collection::vec(any::<u8>(), 0..400)) {
        let ca = shared_ca();
        let pem = pem_encode("CERTIFICATE REQUEST", &der);
        let _ = ca.sign_workload_csr(&pem, &workload("web"), HOUR);
    }

    #[test]
    fn mutated_csrs_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let (ca, good) = shared_csr();
        let mut der = good.clone();
        for (index, byte) in edits {
            let at = index.index(der.len());
            der[at] = byte;
        }
        let pem = pem_encode("CERTIFICATE REQUEST", &der);
        if let Ok(issued) = ca.sign_workload_csr(&pem, &workload("web"), HOUR) {
            // Whatever survives the mutation, the identity is still the caller's.
            prop_assert_eq!(inspect(&issued.chain_pem).0.uris, vec![workload("web").to_string()]);
        }
    }

    #[test]
    fn mutated_certificates_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let cert = shared_cert();
        let mut der = cert.clone();
        for (index, byte) in edits {
            let at = index.index(der.len());
            der[at] = byte;
        }
        crate::fuzz::certificate(&der);
    }

    #[test]
    fn arbitrary_issuer_files_never_panic(der in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = CertificateAuthority::from_pem(TD, &certificate_pem(&der), &pem_encode("PRIVATE KEY", &der));
    }
}

fn shared_ca() -> &'static CertificateAuthority {
    static CA: std::sync::OnceLock<CertificateAuthority> = std::sync::OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate(TD).unwrap())
}

/// A CA and the DER of a valid CSR for it.
fn shared_csr() -> (&'static CertificateAuthority, &'static Vec<u8>) {
    static CSR: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let der = CSR.get_or_init(|| {
        let key = WorkloadKey::generate().unwrap();
        let pem = csr_for(&key, "other");
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    });
    (shared_ca(), der)
}

/// The DER of a leaf the shared CA issued.
fn shared_cert() -> &'static Vec<u8> {
    static CERT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let key = WorkloadKey::generate().unwrap();
        let issued = shared_ca()
            .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), HOUR)
            .unwrap();
        certificates_from_pem(&issued.chain_pem).unwrap()[0]
            .as_ref()
            .to_vec()
    })
}

#[test]
fn extra_roots_join_the_bundle_and_bad_ones_are_refused() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    assert_eq!(
        ca.bundle_pem(),
        ca.root_pem(),
        "no extra roots: the root alone"
    );
    let next = CertificateAuthority::generate(TD).unwrap();
    // The issuer's own root listed again is dropped, not duplicated.
    ca.set_extra_roots(&format!("{}{}", next.root_pem(), ca.root_pem()))
        .unwrap();
    assert_eq!(
        ca.bundle_pem(),
        format!("{}{}", ca.root_pem(), next.root_pem())
    );

    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .sign_workload_csr(&csr_for(&key, "web"), &workload("web"), HOUR)
        .unwrap();
    let chain = certificates_from_pem(&issued.chain_pem).unwrap();
    let bundle = crate::tls::TrustBundle::from_pem(&ca.bundle_pem(), TD).unwrap();
    bundle.check_chain(&chain).unwrap();

    // A leaf is not a root; garbage is not PEM; a failed call keeps what was set.
    let error = ca.set_extra_roots(&issued.chain_pem).unwrap_err();
    assert!(matches!(error, CaError::ExtraRoots { .. }), "{error}");
    assert!(error.to_string().contains("not a CA"), "{error}");
    let error = ca
        .set_extra_roots("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
        .unwrap_err();
    assert!(matches!(error, CaError::ExtraRoots { .. }), "{error}");
    assert_eq!(
        ca.bundle_pem(),
        format!("{}{}", ca.root_pem(), next.root_pem())
    );
    ca.set_extra_roots("\n").unwrap();
    assert_eq!(ca.bundle_pem(), ca.root_pem());
}
