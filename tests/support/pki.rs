//! Certificates made for one test with rcgen: a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and a client certificate, written as PEM files to a fresh directory that is
//! removed on drop.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// A certificate and its private key, as PEM text and as files.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A test CA with a server and a client certificate it signed.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub server: Pair,
    pub client: Pair,
}

impl TestPki {
    /// Creates the CA and both certificates under a new directory in the system's temporary
    /// directory.
    pub fn new() -> TestPki {
        let dir = std::env::temp_dir().join(super::unique("kafka-scc-pki"));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "kafka-scc test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let ca_pem = ca_cert.pem();
        let ca_path = write(&dir, "ca.pem", &ca_pem);
        let issuer = Issuer::new(ca_params, ca_key);

        let server = leaf(&dir, "server", &issuer, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        let client = leaf(&dir, "client", &issuer, &["kafka-scc-client"], ExtendedKeyUsagePurpose::ClientAuth);
        TestPki { dir, ca_pem, ca_path, server, client }
    }

    /// Returns the server's TLS configuration: its certificate, and no client certificate requested.
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.server.cert_pem, &self.server.key_pem))
    }

    /// Returns the server's mutual TLS configuration: client certificates signed by the test CA
    /// are required.
    pub fn server_mtls(&self) -> ServerTlsConfig {
        self.server_tls().client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// Writes `contents` to a file in this PKI's directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        write(&self.dir, name, contents)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn leaf(dir: &Path, name: &str, issuer: &Issuer<'_, KeyPair>, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
    let key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    let cert_pem = cert.pem();
    let key_pem = key.serialize_pem();
    let cert_path = write(dir, &format!("{name}.pem"), &cert_pem);
    let key_path = write(dir, &format!("{name}-key.pem"), &key_pem);
    Pair { cert_pem, key_pem, cert_path, key_path }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a PEM file");
    path
}
