//! Workload keys: generated in memory, never written to disk.
//!
//! The CSR asks for the workload's SPIFFE ID as its one URI SAN, but the CA ignores everything in
//! it except the public key (and the self-signature proving possession of the key): the identity
//! comes from the caller's authenticated token.

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::TlsError;
use crate::SpiffeId;

/// A workload's private key (ECDSA P-256), in memory only.
pub struct WorkloadKey {
    key: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadKey(..)")
    }
}

impl WorkloadKey {
    /// Generates a key.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(TlsError::KeyGeneration)?;
        Ok(Self { key })
    }

    /// A CSR (PEM) for `id` signed with this key.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(id.as_str()).map_err(TlsError::Csr)?,
        )];
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(TlsError::Csr)
    }

    /// The key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The public key as DER SubjectPublicKeyInfo (to match against a certificate).
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateSigningRequestDer;
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509CertificationRequest};

    use super::*;

    #[test]
    fn csr_carries_the_id_and_a_valid_signature() {
        let key = WorkloadKey::generate().unwrap();
        let id = SpiffeId::workload("td", "ns1", "web").unwrap();
        let pem = key.csr_pem(&id).unwrap();
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        let uris: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|ext| match ext {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec![id.to_string()]);
        assert_eq!(
            csr.certification_request_info.subject_pki.raw,
            key.public_key_der().as_slice()
        );
    }

    #[test]
    fn keys_are_fresh_and_not_printed() {
        let a = WorkloadKey::generate().unwrap();
        let b = WorkloadKey::generate().unwrap();
        assert_ne!(a.public_key_der(), b.public_key_der());
        assert_eq!(format!("{a:?}"), "WorkloadKey(..)");
        assert!(matches!(a.private_key(), PrivateKeyDer::Pkcs8(_)));
    }
}
