use super::*;
use crate::csr::WorkloadKey;
use crate::tls::Credentials;

#[test]
fn smoke_generate_sign_and_load() {
    let ca = CertificateAuthority::generate("example.org").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let id = SpiffeId::workload("example.org", "default", "web").unwrap();
    let csr = key.csr_pem(&id).unwrap();
    let issued = ca
        .sign_workload_csr(&csr, &id, Duration::from_secs(3600))
        .unwrap();
    let credentials = Credentials::from_pem(&issued.chain_pem, &key).unwrap();
    assert_eq!(credentials.id, id);
    let reloaded =
        CertificateAuthority::from_pem("example.org", &ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(reloaded.root_pem(), ca.root_pem());
}
