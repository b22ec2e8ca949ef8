//! A test PKI made at test time (rcgen): a CA, a server certificate for
//! 127.0.0.1 signed by it, client certificates signed by it (and one that
//! is not), as PEM files in a directory; and the rustls server
//! configuration of a receiver that requires a client certificate from the
//! CA (`Receiver::start_tls`). Also the token endpoint's answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::Behaviour;

/// The PEM files one test uses, all in one directory.
pub struct Pki {
    /// The CA's certificate: `delivery.ca_file`.
    pub ca_file: PathBuf,
    /// A client certificate signed by the CA, and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A key that belongs to no certificate here.
    pub other_key: PathBuf,
    server: rustls::ServerConfig,
}

impl Pki {
    /// Makes the CA and the certificates, writes the PEM files into `dir`
    /// (keys with mode 0600).
    pub fn new(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "cdrhook test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");

        let server_key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server
            .signed_by(&server_key, &ca_cert, &ca_key)
            .expect("server certificate");

        let client_key = KeyPair::generate().expect("client key");
        let mut client =
            CertificateParams::new(vec!["cdrhook-client".to_string()]).expect("client params");
        client
            .distinguished_name
            .push(DnType::CommonName, "cdrhook-client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client
            .signed_by(&client_key, &ca_cert, &ca_key)
            .expect("client certificate");
        let other_key = KeyPair::generate().expect("other key");

        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            if name.ends_with(".key") {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            }
            path
        };
        let ca_file = write("ca.pem", ca_cert.pem());
        let client_cert_path = write("client.pem", client_cert.pem());
        let client_key_path = write("client.key", client_key.serialize_pem());
        let other_key_path = write("other.key", other_key.serialize_pem());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("the CA as a root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("server TLS config");
        Pki {
            ca_file,
            client_cert: client_cert_path,
            client_key: client_key_path,
            other_key: other_key_path,
            server,
        }
    }

    /// The rustls configuration of a receiver that requires a client
    /// certificate signed by the CA.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::new(self.server.clone())
    }
}

/// A token endpoint's `200` answer (RFC 6749 §5.1), with `expires_in`
/// when given.
pub fn token_answer(token: &str, expires_in: Option<u64>) -> Behaviour {
    let body = match expires_in {
        Some(s) => {
            format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{s}}}"#)
        }
        None => format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#),
    };
    Behaviour::Respond {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.into_bytes(),
    }
}
