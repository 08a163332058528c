//! Small X.509 helpers shared by the CA and the TLS side: strict DER parsing, PEM certificate
//! lists, and conversions between certificate times and `SystemTime`.

use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// The most certificates a PEM chain or bundle may hold. Real chains are 1–3 deep and bundles a
/// handful of roots; the cap bounds work on hostile input.
pub(crate) const MAX_CERTIFICATES: usize = 16;

/// The latest time X.509 can express (9999-12-31T23:59:59Z); times are clamped to it so that
/// conversions to certificate times cannot overflow.
const MAX_X509_SECS: u64 = 253_402_300_799;

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_certificate(der: &[u8]) -> Option<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
}

/// Why a PEM certificate list could not be read.
#[derive(Debug)]
pub(crate) enum PemListError {
    /// The PEM framing or base64 is broken.
    Pem(String),
    /// No `CERTIFICATE` section.
    Empty,
    /// More than [`MAX_CERTIFICATES`].
    TooMany,
}

/// All `CERTIFICATE` sections of `pem`, in order (other section kinds are skipped).
pub(crate) fn certificates_from_pem(
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, PemListError> {
    let mut certificates = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let certificate = item.map_err(|error| PemListError::Pem(error.to_string()))?;
        if certificates.len() == MAX_CERTIFICATES {
            return Err(PemListError::TooMany);
        }
        certificates.push(certificate);
    }
    if certificates.is_empty() {
        return Err(PemListError::Empty);
    }
    Ok(certificates)
}

/// PEM text for one DER certificate.
pub(crate) fn certificate_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// PEM encoding with 64-column base64 lines and a trailing newline.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let encoded = base64(der);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut rest = encoded.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// A certificate time as `SystemTime`.
pub(crate) fn system_time(time: ASN1Time) -> SystemTime {
    let secs = time.timestamp();
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let converted = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(magnitude)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(magnitude)
    };
    converted.unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `time` moved into the range certificates can express (1970 to 9999).
pub(crate) fn clamp(time: SystemTime) -> SystemTime {
    let max = SystemTime::UNIX_EPOCH + Duration::from_secs(MAX_X509_SECS);
    time.clamp(SystemTime::UNIX_EPOCH, max)
}

/// Human-readable UTC time for error messages.
pub(crate) fn display_time(time: SystemTime) -> String {
    let secs = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    match ASN1Time::from_timestamp(secs) {
        Ok(time) => time.to_string(),
        Err(_) => format!("{secs} (unix time)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn pem_roundtrips_through_pki_types() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
        assert!(pem.lines().all(|line| line.len() <= 64));
    }

    #[test]
    fn times_clamp_and_display() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 1000);
        assert!(clamp(far) < far);
        assert!(display_time(SystemTime::UNIX_EPOCH).contains("1970"));
        assert!(display_time(clamp(far)).contains("9999"));
    }
}
