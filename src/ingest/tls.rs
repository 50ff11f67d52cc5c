//! RTSP over TLS (`rtsps://`) for retina, which speaks plain RTSP only.
//!
//! Per session, [`connect`] opens TCP to the camera, completes the TLS handshake with rustls (ring
//! provider) and verifies the camera's certificate with [`CameraVerifier`]: by a pinned SHA-256 of
//! the end-entity certificate (`tls_fingerprint`), or by `tls_ca_file` (a PEM file of CAs, or the
//! camera's self-signed certificate itself, which then matches byte for byte). Only after the
//! check passed it binds a listener on 127.0.0.1 (ephemeral port) that accepts exactly one
//! connection, within [`ACCEPT_TIMEOUT`], and pipes it through the TLS stream: retina gets
//! `rtsp://127.0.0.1:PORT/path?query` and runs DESCRIBE / SETUP / PLAY with RTP interleaved on
//! that one connection (TCP only; config refuses `transport = "udp"` with `rtsps://`). The
//! relay passes bytes unchanged, so the request URIs name 127.0.0.1:PORT; digest authentication
//! works because retina computes it over the URI it sends, and the camera checks it against the
//! URI it receives. A failed check ends the session before a single RTSP byte is sent, with an
//! error naming the reason ("certificate fingerprint does not match tls_fingerprint", "not signed
//! by tls_ca_file"). Dropping the [`Relay`] ends its task.
//!
//! A local process that wins the race for the one accept gets what it could get by connecting to
//! the camera itself (the relay adds no credentials); retina then fails to connect and the
//! session is retried.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

/// Default port of `rtsps://` (RFC 7826).
pub const RTSPS_DEFAULT_PORT: u16 = 322;
/// How long the relay waits for retina to connect.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a camera's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The SHA-256 of the end-entity certificate's DER must be this.
    Fingerprint([u8; 32]),
    /// The certificates of `tls_ca_file`.
    CaFile(Vec<CertificateDer<'static>>),
}

impl Trust {
    /// Loads `tls_ca_file`; the error names what is wrong with the file (not the key: the caller
    /// knows it).
    pub fn load_ca_file(path: &Path) -> Result<Self, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not a valid PEM file ({e})", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} contains no PEM certificate", path.display()));
        }
        Ok(Trust::CaFile(certs))
    }
}

/// The TLS settings of one `rtsps://` camera, built once at startup.
#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// The TLS settings of `camera`: `None` for `rtsp://`; for `rtsps://` its pin or its
    /// `tls_ca_file`, loaded now (the error names the key).
    pub fn for_camera(
        camera: &crate::config::Camera,
    ) -> Result<Option<Self>, crate::config::ConfigError> {
        if camera.url.scheme() != "rtsps" {
            return Ok(None);
        }
        let err = |k: &str, message: String| crate::config::ConfigError {
            key: format!("{}.{k}", camera.key),
            message,
        };
        let trust = match (&camera.tls_fingerprint, &camera.tls_ca_file) {
            (Some(fp), _) => Trust::Fingerprint(*fp),
            (None, Some(path)) => Trust::load_ca_file(path).map_err(|m| err("tls_ca_file", m))?,
            (None, None) => {
                return Err(err(
                    "tls_fingerprint",
                    "an rtsps:// camera needs tls_fingerprint or tls_ca_file".to_owned(),
                ))
            }
        };
        Self::new(trust)
            .map(Some)
            .map_err(|m| err("tls_ca_file", m))
    }

    /// A client that checks the camera's certificate by `trust`.
    pub fn new(trust: Trust) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(CameraVerifier::new(trust, provider.clone())?);
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

/// Checks a camera's certificate against a pin or `tls_ca_file`, with messages that say why.
#[derive(Debug)]
pub struct CameraVerifier {
    trust: Trust,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

/// Why a certificate was refused (shown as the camera's `last_error`).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refuse(msg: String) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Refused(msg),
    ))))
}

/// `ab:cd:...` of a SHA-256.
pub fn fingerprint_hex(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl CameraVerifier {
    /// A verifier for `trust`, using `provider`'s signature algorithms.
    pub fn new(trust: Trust, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let webpki = match &trust {
            Trust::Fingerprint(_) => None,
            Trust::CaFile(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                // Certificates that are not usable as anchors still match byte for byte.
                let (_added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
                if roots.is_empty() {
                    None
                } else {
                    Some(
                        WebPkiServerVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider.clone(),
                        )
                        .build()
                        .map_err(|e| format!("TLS setup: {e}"))?,
                    )
                }
            }
        };
        Ok(Self {
            trust,
            webpki,
            provider,
        })
    }
}

impl ServerCertVerifier for CameraVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        match &self.trust {
            Trust::Fingerprint(pin) => {
                if bool::from(subtle::ConstantTimeEq::ct_eq(&got[..], &pin[..])) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(refuse(format!(
                        "certificate fingerprint does not match tls_fingerprint (the camera \
                         presented SHA-256 {})",
                        fingerprint_hex(&got)
                    )))
                }
            }
            Trust::CaFile(certs) => {
                // The camera's self-signed certificate itself in tls_ca_file: a byte-for-byte pin.
                if certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
                    return Ok(ServerCertVerified::assertion());
                }
                let Some(webpki) = &self.webpki else {
                    return Err(refuse(format!(
                        "certificate is not signed by tls_ca_file (SHA-256 {})",
                        fingerprint_hex(&got)
                    )));
                };
                webpki
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                    .map_err(|e| refuse(explain_webpki(&e, server_name, &got)))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A webpki verdict in words an operator can act on.
fn explain_webpki(e: &TlsError, name: &ServerName<'_>, got: &[u8; 32]) -> String {
    let fp = fingerprint_hex(got);
    let host = match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        _ => "the camera's host".to_owned(),
    };
    match e {
        TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!("certificate is not signed by tls_ca_file (SHA-256 {fp})"),
        TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            format!("certificate is signed by tls_ca_file but not valid for {host} (SHA-256 {fp})")
        }
        TlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("certificate has expired (SHA-256 {fp})"),
        TlsError::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => format!("certificate is not valid yet (SHA-256 {fp})"),
        other => format!("certificate refused: {other} (SHA-256 {fp})"),
    }
}

/// A running relay: retina connects to [`Relay::url`]. Dropping it ends the relay.
#[derive(Debug)]
pub struct Relay {
    /// `rtsp://127.0.0.1:PORT/path?query` of the camera's URL.
    pub url: url::Url,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The host of `url` as rustls wants it (SNI / name check).
fn server_name(url: &url::Url) -> Result<ServerName<'static>, String> {
    match url.host() {
        Some(url::Host::Domain(d)) => ServerName::try_from(d.to_owned())
            .map_err(|_| "the camera's host name is not valid for TLS".to_owned()),
        Some(url::Host::Ipv4(ip)) => Ok(ServerName::IpAddress(IpAddr::V4(ip).into())),
        Some(url::Host::Ipv6(ip)) => Ok(ServerName::IpAddress(IpAddr::V6(ip).into())),
        None => Err("the camera URL has no host".to_owned()),
    }
}

/// Connects to an `rtsps://` camera, checks its certificate, and starts a relay for retina.
/// Errors are free of the URL.
pub async fn connect(camera: &url::Url, tls: &TlsClient) -> Result<Relay, String> {
    let name = server_name(camera)?;
    let port = camera.port().unwrap_or(RTSPS_DEFAULT_PORT);
    let tcp = match camera.host() {
        Some(url::Host::Domain(d)) => TcpStream::connect((d, port)).await,
        Some(url::Host::Ipv4(ip)) => TcpStream::connect((ip, port)).await,
        Some(url::Host::Ipv6(ip)) => TcpStream::connect((ip, port)).await,
        None => return Err("the camera URL has no host".to_owned()),
    }
    .map_err(|e| format!("connecting to the camera: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = tls
        .connector
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_error(&e))?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| format!("TLS relay: cannot listen on 127.0.0.1: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("TLS relay: {e}"))?;
    let mut url = camera.clone();
    url.set_scheme("rtsp")
        .map_err(|()| "TLS relay: cannot rewrite the URL scheme".to_owned())?;
    url.set_ip_host(local.ip())
        .map_err(|()| "TLS relay: cannot rewrite the URL host".to_owned())?;
    url.set_port(Some(local.port()))
        .map_err(|()| "TLS relay: cannot rewrite the URL port".to_owned())?;
    let task = tokio::spawn(async move {
        let accepted = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await;
        // Exactly one connection: nobody else can attach to this camera session.
        drop(listener);
        if let Ok(Ok((mut inner, _))) = accepted {
            let _ = inner.set_nodelay(true);
            if let Err(e) = tokio::io::copy_bidirectional(&mut inner, &mut stream).await {
                tracing::debug!(error = %e, "TLS relay ended");
            }
        }
    });
    Ok(Relay { url, task })
}

/// A handshake failure in words: the certificate verdict if that was it.
fn handshake_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) {
        Some(TlsError::InvalidCertificate(CertificateError::Other(o))) => {
            format!("TLS: {}", o.0)
        }
        Some(t) => format!("TLS handshake with the camera failed: {t}"),
        None => format!("TLS handshake with the camera failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(trust: Trust) -> CameraVerifier {
        CameraVerifier::new(trust, Arc::new(rustls::crypto::ring::default_provider())).unwrap()
    }

    fn check(v: &CameraVerifier, der: &[u8]) -> Result<(), String> {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        v.verify_server_cert(
            &CertificateDer::from(der.to_vec()),
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| match e {
            TlsError::InvalidCertificate(CertificateError::Other(o)) => o.0.to_string(),
            other => panic!("unexpected error kind {other:?}"),
        })
    }

    #[test]
    fn a_pinned_fingerprint_accepts_exactly_that_certificate() {
        let der = b"the camera's certificate, DER".to_vec();
        let pin: [u8; 32] = Sha256::digest(&der).into();
        let v = verifier(Trust::Fingerprint(pin));
        assert_eq!(check(&v, &der), Ok(()));
        let mut other = der.clone();
        other[0] ^= 1;
        let e = check(&v, &other).unwrap_err();
        assert!(
            e.starts_with("certificate fingerprint does not match tls_fingerprint"),
            "{e}"
        );
        let got: [u8; 32] = Sha256::digest(&other).into();
        assert!(
            e.contains(&fingerprint_hex(&got)),
            "names what was presented: {e}"
        );
    }

    #[test]
    fn a_ca_file_certificate_matches_byte_for_byte_and_anything_else_is_refused() {
        // Not parsable as a trust anchor: only the exact bytes are trusted.
        let der = b"a self-signed camera certificate".to_vec();
        let v = verifier(Trust::CaFile(vec![CertificateDer::from(der.clone())]));
        assert_eq!(check(&v, &der), Ok(()));
        let e = check(&v, b"another certificate").unwrap_err();
        assert!(
            e.starts_with("certificate is not signed by tls_ca_file"),
            "{e}"
        );
    }

    #[test]
    fn fingerprints_print_as_colon_separated_hex() {
        let mut fp = [0u8; 32];
        fp[0] = 0xab;
        fp[31] = 0x01;
        let s = fingerprint_hex(&fp);
        assert!(s.starts_with("ab:00:"));
        assert!(s.ends_with(":00:01"));
        assert_eq!(s.len(), 32 * 3 - 1);
    }

    fn camera(
        url: &str,
        ca: Option<std::path::PathBuf>,
        pin: Option<[u8; 32]>,
    ) -> crate::config::Camera {
        crate::config::Camera {
            id: "cam".into(),
            site: "site".into(),
            url: url::Url::parse(url).unwrap(),
            username: None,
            password: crate::config::PasswordSource::None,
            transport: crate::config::Transport::Tcp,
            allow_basic_auth: false,
            tls_ca_file: ca,
            tls_fingerprint: pin,
            key: "cameras[3]".into(),
        }
    }

    #[test]
    fn camera_settings_pick_the_client_and_name_the_key_of_a_bad_ca_file() {
        assert!(TlsClient::for_camera(&camera("rtsp://h/x", None, None))
            .unwrap()
            .is_none());
        assert!(
            TlsClient::for_camera(&camera("rtsps://h/x", None, Some([1; 32])))
                .unwrap()
                .is_some()
        );
        let dir = tempfile::tempdir().unwrap();
        let e = TlsClient::for_camera(&camera(
            "rtsps://h/x",
            Some(dir.path().join("missing.pem")),
            None,
        ))
        .unwrap_err();
        assert_eq!(e.key, "cameras[3].tls_ca_file");
        assert!(e.message.starts_with("cannot read "), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a pem\n").unwrap();
        let e = Trust::load_ca_file(&p).unwrap_err();
        assert!(e.contains("contains no PEM certificate"), "{e}");
        let e = Trust::load_ca_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(e.starts_with("cannot read "), "{e}");
    }
}
