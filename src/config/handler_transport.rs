//! The handler transport settings: TLS for `https://` endpoints (`HANDLER_TLS_*`), the gRPC
//! message size limit (`SCC_HANDLER_MAX_MESSAGE_BYTES`), and the parsing of handler endpoints.
//!
//! PEM files are read and checked once, at start-up: a missing, unreadable or invalid file is a
//! [`ConfigError`] naming the variable and the path. File contents never appear in an error, a
//! log line or `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rdkafka::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

use super::{ConfigError, Env, KafkaProperties};

/// Default of `SCC_HANDLER_MAX_MESSAGE_BYTES`: 4 MiB, the default receive limit of the common
/// gRPC servers (grpc-go, grpc-java, the gRPC C core with its Python binding, grpc-js, tonic).
/// A handler server left at its default therefore accepts every request kafka-scc sends. A
/// larger message is rejected by kafka-scc itself as a non-pausing error, not by the handler as
/// RESOURCE_EXHAUSTED, which is pause-eligible by default and would be retried forever. It is
/// four times librdkafka's default `max.partition.fetch.bytes`, so a record of that size fits
/// with its key and headers.
pub const DEFAULT_HANDLER_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Room reserved in a handler request for everything but the record's key, value and headers:
/// topic (up to 249 bytes), group id, trace id, partition, offset, timestamp, attempt, and the
/// protobuf framing of each field and header. `SCC_HANDLER_MAX_MESSAGE_BYTES` must be at least
/// librdkafka's `max.partition.fetch.bytes` plus this.
pub const HANDLER_REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;

/// librdkafka's default `fetch.message.max.bytes` (alias `max.partition.fetch.bytes`).
const DEFAULT_PARTITION_FETCH_BYTES: usize = 1_048_576;

/// The settings of every handler connection apart from its address: TLS and the message size
/// limit, the same for every handler endpoint. [`crate::GrpcHandler::new`] builds a client from it.
#[derive(Clone, Debug)]
pub struct HandlerTransport {
    /// `HANDLER_TLS_*`: used by `https://` endpoints.
    pub tls: HandlerTls,
    /// `SCC_HANDLER_MAX_MESSAGE_BYTES`: the largest encoded request sent to the handler, and the
    /// largest response accepted, in bytes. A larger message is a non-pausing failure, never
    /// sent.
    pub max_message_bytes: usize,
}

impl Default for HandlerTransport {
    fn default() -> Self {
        HandlerTransport { tls: HandlerTls::default(), max_message_bytes: DEFAULT_HANDLER_MAX_MESSAGE_BYTES }
    }
}

impl HandlerTransport {
    /// Formats the settings for the configuration summary; TLS files appear as paths.
    pub(super) fn summary(&self, https: bool) -> String {
        let mut line = format!(" handler_max_message_bytes={}", self.max_message_bytes);
        if !https {
            return line;
        }
        let ca = self.tls.ca.as_ref().map_or_else(|| "system".to_owned(), |ca| ca.path().display().to_string());
        line.push_str(&format!(" handler_tls_ca={ca}"));
        if let Some(identity) = &self.tls.identity {
            line.push_str(&format!(
                " handler_tls_cert={} handler_tls_key={}",
                identity.cert.path().display(),
                identity.key.path().display()
            ));
        }
        if let Some(name) = &self.tls.server_name {
            line.push_str(&format!(" handler_tls_server_name={name}"));
        }
        line
    }
}

/// TLS settings of `https://` handler endpoints, with their PEM files read and checked. Nothing
/// set means TLS with the system's root certificates and no client certificate.
#[derive(Clone, Debug, Default)]
pub struct HandlerTls {
    /// `HANDLER_TLS_CA`: the CA certificates that sign the handler's certificate; `None` uses the
    /// system's root certificates.
    pub ca: Option<PemFile>,
    /// `HANDLER_TLS_CERT` and `HANDLER_TLS_KEY`: the client certificate chain and its private
    /// key, for mutual TLS.
    pub identity: Option<ClientIdentity>,
    /// `HANDLER_TLS_SERVER_NAME`: the name checked in the handler's certificate, and sent as
    /// SNI, in place of the endpoint's host.
    pub server_name: Option<String>,
}

impl HandlerTls {
    /// Returns the name of the first `HANDLER_TLS_*` variable that is set, if any.
    pub fn first_setting(&self) -> Option<&'static str> {
        if self.ca.is_some() {
            Some("HANDLER_TLS_CA")
        } else if self.identity.is_some() {
            Some("HANDLER_TLS_CERT")
        } else if self.server_name.is_some() {
            Some("HANDLER_TLS_SERVER_NAME")
        } else {
            None
        }
    }
}

/// The client certificate chain and private key for mutual TLS with the handler.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// `HANDLER_TLS_CERT`.
    pub cert: PemFile,
    /// `HANDLER_TLS_KEY`.
    pub key: PemFile,
}

/// A PEM file read at start-up. `Debug` shows its path and size only.
#[derive(Clone)]
pub struct PemFile {
    path: PathBuf,
    pem: Arc<[u8]>,
}

impl PemFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the file's contents as read at start-up.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFile")
            .field("path", &self.path)
            .field("pem", &format_args!("[{} bytes]", self.pem.len()))
            .finish()
    }
}

/// A handler endpoint, parsed and checked by [`parse_handler_endpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerAddress {
    /// `http://host:port`: plaintext HTTP/2 over TCP.
    Http(String),
    /// `https://host:port`: TLS over TCP, with the [`HandlerTls`] settings.
    Https(String),
    /// `unix:///absolute/path`: plaintext HTTP/2 over a Unix domain socket.
    Unix(PathBuf),
}

impl fmt::Display for HandlerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerAddress::Http(uri) | HandlerAddress::Https(uri) => f.write_str(uri),
            HandlerAddress::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Parses a handler endpoint and checks it against the TLS settings; `variable` names the
/// setting in errors. Accepted: `http://host:port`, `https://host:port` and
/// `unix:///absolute/path`. An `https://` endpoint without `HANDLER_TLS_CA` uses the system's root
/// certificates. TLS settings with a plaintext endpoint are rejected, so that a connection the
/// operator meant to encrypt is never silently left in plaintext.
pub fn parse_handler_endpoint(variable: &str, raw: &str, tls: &HandlerTls) -> Result<HandlerAddress, ConfigError> {
    if let Some(rest) = raw.strip_prefix("unix:") {
        return parse_unix_endpoint(variable, raw, rest, tls);
    }

    let expected =
        "expected http://host:port, https://host:port or unix:///absolute/path, such as http://127.0.0.1:50051";
    let uri: tonic::transport::Uri = raw.parse().map_err(|_| ConfigError::new(variable, raw, expected))?;
    if uri.host().is_none() {
        return Err(ConfigError::new(variable, raw, expected));
    }
    match uri.scheme_str() {
        Some("http") => match tls.first_setting() {
            Some(setting) => Err(ConfigError::new(
                variable,
                raw,
                format!("{setting} is set, so expected an https:// endpoint: TLS settings do not apply to http://"),
            )),
            None => Ok(HandlerAddress::Http(raw.to_owned())),
        },
        Some("https") => {
            if tls.ca.is_none() && !system_roots_available() {
                return Err(ConfigError::new(
                    "HANDLER_TLS_CA",
                    "",
                    format!(
                        "missing: {variable} is https:// and the system has no root certificates; set HANDLER_TLS_CA to the PEM file of the CA that signs the handler's certificate"
                    ),
                ));
            }
            Ok(HandlerAddress::Https(raw.to_owned()))
        }
        _ => Err(ConfigError::new(variable, raw, expected)),
    }
}

/// Parses the part after `unix:`. `unix:///path` and `unix:/path` are accepted, as in gRPC's
/// naming; a relative path is rejected because it would depend on the working directory.
fn parse_unix_endpoint(variable: &str, raw: &str, rest: &str, tls: &HandlerTls) -> Result<HandlerAddress, ConfigError> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    // Linux's sun_path is 108 bytes long, the terminating NUL included.
    if !path.starts_with('/') || path.len() < 2 || path.len() > 107 || path.contains('\0') {
        return Err(ConfigError::new(
            variable,
            raw,
            "expected unix:///absolute/path, with an absolute socket path of at most 107 bytes",
        ));
    }
    if let Some(setting) = tls.first_setting() {
        return Err(ConfigError::new(
            variable,
            raw,
            format!(
                "{setting} is set, but TLS over a Unix socket is not supported; use an https:// endpoint or unset HANDLER_TLS_*"
            ),
        ));
    }
    Ok(HandlerAddress::Unix(PathBuf::from(path)))
}

/// Returns true when the system's root certificate store has at least one certificate.
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` override where it is looked for.
fn system_roots_available() -> bool {
    !rustls_native_certs::load_native_certs().certs.is_empty()
}

/// Reads and checks `HANDLER_TLS_CA`, `HANDLER_TLS_CERT`, `HANDLER_TLS_KEY` and
/// `HANDLER_TLS_SERVER_NAME`.
pub(super) fn parse_handler_tls(env: &Env<'_>) -> Result<HandlerTls, ConfigError> {
    let ca = read_pem_file(env, "HANDLER_TLS_CA")?;
    if let Some(ca) = &ca {
        check_ca(ca)?;
    }

    let cert = read_pem_file(env, "HANDLER_TLS_CERT")?;
    let key = read_pem_file(env, "HANDLER_TLS_KEY")?;
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => {
            check_identity(&cert, &key)?;
            Some(ClientIdentity { cert, key })
        }
        (None, None) => None,
        (Some(cert), None) => {
            return Err(ConfigError::new(
                "HANDLER_TLS_CERT",
                &cert.path.display().to_string(),
                "set without HANDLER_TLS_KEY; set both for mutual TLS, or neither",
            ));
        }
        (None, Some(key)) => {
            return Err(ConfigError::new(
                "HANDLER_TLS_KEY",
                &key.path.display().to_string(),
                "set without HANDLER_TLS_CERT; set both for mutual TLS, or neither",
            ));
        }
    };

    let server_name = match env.get("HANDLER_TLS_SERVER_NAME") {
        Some(name) if ServerName::try_from(name).is_ok() => Some(name.to_owned()),
        Some(name) => {
            return Err(ConfigError::new(
                "HANDLER_TLS_SERVER_NAME",
                name,
                "expected a DNS name or an IP address, such as handler.example.internal",
            ));
        }
        None => None,
    };
    Ok(HandlerTls { ca, identity, server_name })
}

/// Reads the file named by `variable`, if set.
// NOTE: the TLS files are read once, at start-up; a renewed certificate takes effect only after
// a restart.
fn read_pem_file(env: &Env<'_>, variable: &str) -> Result<Option<PemFile>, ConfigError> {
    let Some(raw) = env.get(variable) else {
        return Ok(None);
    };
    if raw.trim().is_empty() {
        return Err(ConfigError::new(variable, raw, "expected the path of a PEM file"));
    }
    match std::fs::read(raw) {
        Ok(pem) => Ok(Some(PemFile { path: PathBuf::from(raw), pem: pem.into() })),
        Err(error) => Err(ConfigError::new(
            variable,
            raw,
            format!("the file cannot be read ({error}); expected the path of a readable PEM file"),
        )),
    }
}

/// Checks that the CA file contains at least one certificate usable as a trust anchor.
fn check_ca(ca: &PemFile) -> Result<(), ConfigError> {
    let form = "expected a PEM file with the CA certificates that sign the handler's certificate";
    let certificates = parse_certificates(ca, "HANDLER_TLS_CA", form)?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|error| {
            ConfigError::new("HANDLER_TLS_CA", &ca.path.display().to_string(), format!("{form}: {error}"))
        })?;
    }
    Ok(())
}

/// Checks that the certificate file contains a chain, and the key file a private key that
/// belongs to the chain's first certificate.
fn check_identity(cert: &PemFile, key: &PemFile) -> Result<(), ConfigError> {
    let chain = parse_certificates(cert, "HANDLER_TLS_CERT", "expected a PEM file with the client certificate chain")?;
    let path = key.path.display().to_string();
    let form = "expected a PEM file with the unencrypted private key (PKCS#8, PKCS#1 or SEC1) of HANDLER_TLS_CERT";
    let private_key =
        PrivateKeyDer::from_pem_slice(&key.pem).map_err(|_| ConfigError::new("HANDLER_TLS_KEY", &path, form))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)
        .map_err(|error| ConfigError::new("HANDLER_TLS_KEY", &path, format!("{form}: {error}")))?;
    match CertifiedKey::new(chain, signing_key).keys_match() {
        // Unknown: the key type cannot report its public key, so there is nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(error) => Err(ConfigError::new("HANDLER_TLS_KEY", &path, format!("{form}: {error}"))),
    }
}

/// Parses the CERTIFICATE blocks of a PEM file; at least one is required. Errors never quote the
/// file, which may contain a private key by mistake.
fn parse_certificates(file: &PemFile, variable: &str, form: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let path = file.path.display().to_string();
    match CertificateDer::pem_slice_iter(&file.pem).collect::<Result<Vec<_>, _>>() {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        Ok(_) => Err(ConfigError::new(variable, &path, format!("{form}; the file has no CERTIFICATE block"))),
        Err(_) => Err(ConfigError::new(variable, &path, format!("{form}; the file is not valid PEM"))),
    }
}

/// Reads `SCC_HANDLER_MAX_MESSAGE_BYTES` and checks it against librdkafka's effective
/// `max.partition.fetch.bytes`. Every record up to the fetch size, plus the request's other
/// fields, must fit: otherwise records that Kafka routinely delivers would be rejected as
/// non-pausing failures and committed without reaching the handler.
pub(super) fn parse_handler_max_message_bytes(
    env: &Env<'_>,
    kafka_properties: &KafkaProperties,
) -> Result<usize, ConfigError> {
    const VARIABLE: &str = "SCC_HANDLER_MAX_MESSAGE_BYTES";
    let limit = env.integer(VARIABLE, DEFAULT_HANDLER_MAX_MESSAGE_BYTES as u64, 1, i32::MAX as u64)? as usize;
    let fetch_bytes = partition_fetch_bytes(kafka_properties);
    let needed = fetch_bytes.saturating_add(HANDLER_REQUEST_OVERHEAD_BYTES);
    if limit < needed {
        let shown = env.get(VARIABLE).map_or_else(|| limit.to_string(), str::to_owned);
        return Err(ConfigError::new(
            VARIABLE,
            &shown,
            format!(
                "expected at least {needed} bytes: librdkafka's max.partition.fetch.bytes ({fetch_bytes}) plus {HANDLER_REQUEST_OVERHEAD_BYTES} for the request's other fields; raise {VARIABLE} or lower KAFKA_CFG_MAX_PARTITION_FETCH_BYTES"
            ),
        ));
    }
    Ok(limit)
}

/// Returns librdkafka's effective `fetch.message.max.bytes`, resolved by librdkafka itself, so
/// that the alias `max.partition.fetch.bytes` counts too.
fn partition_fetch_bytes(kafka_properties: &KafkaProperties) -> usize {
    let mut config = ClientConfig::new();
    for (name, value) in kafka_properties {
        config.set(name, value);
    }
    config
        .create_native_config()
        .ok()
        .and_then(|native| native.get("fetch.message.max.bytes").ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_PARTITION_FETCH_BYTES)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        vars.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    fn with_server_name() -> HandlerTls {
        HandlerTls { server_name: Some("handler.test".to_owned()), ..HandlerTls::default() }
    }

    #[test]
    fn endpoints_parse_by_scheme() {
        let none = HandlerTls::default();
        assert_eq!(
            parse_handler_endpoint("HANDLER_ENDPOINT", "http://127.0.0.1:50051", &none),
            Ok(HandlerAddress::Http("http://127.0.0.1:50051".to_owned()))
        );
        assert_eq!(
            parse_handler_endpoint("HANDLER_ENDPOINT", "unix:///run/handler.sock", &none),
            Ok(HandlerAddress::Unix(PathBuf::from("/run/handler.sock")))
        );
        assert_eq!(
            parse_handler_endpoint("HANDLER_ENDPOINT", "unix:/run/handler.sock", &none),
            Ok(HandlerAddress::Unix(PathBuf::from("/run/handler.sock")))
        );
        assert_eq!(HandlerAddress::Unix(PathBuf::from("/run/handler.sock")).to_string(), "unix:///run/handler.sock");
    }

    #[test]
    fn invalid_endpoints_are_rejected() {
        let long = format!("unix:///{}", "s".repeat(107));
        let cases = [
            "127.0.0.1:50051",
            "ftp://127.0.0.1:21",
            "unix://handler.sock",
            "unix:relative.sock",
            "unix://",
            long.as_str(),
        ];
        for raw in cases {
            let error = parse_handler_endpoint("HANDLER_ENDPOINT", raw, &HandlerTls::default()).unwrap_err();
            assert_eq!(error.variable, "HANDLER_ENDPOINT", "{raw}");
            assert_eq!(error.value, raw, "{raw}");
        }
    }

    #[test]
    fn tls_settings_need_https() {
        for raw in ["http://127.0.0.1:50051", "unix:///run/handler.sock"] {
            let error = parse_handler_endpoint("HANDLER_ENDPOINT", raw, &with_server_name()).unwrap_err();
            assert_eq!(error.variable, "HANDLER_ENDPOINT", "{raw}");
            assert!(error.expected.contains("HANDLER_TLS_SERVER_NAME"), "{error}");
        }
    }

    #[test]
    fn message_limit_must_cover_fetch_size() {
        let default = KafkaProperties::default();
        let vars = env(&[]);
        assert_eq!(parse_handler_max_message_bytes(&Env(&vars), &default), Ok(DEFAULT_HANDLER_MAX_MESSAGE_BYTES));

        let large_fetch: KafkaProperties =
            BTreeMap::from([("max.partition.fetch.bytes".to_owned(), "10485760".to_owned())]).into();
        let error = parse_handler_max_message_bytes(&Env(&vars), &large_fetch).unwrap_err();
        assert_eq!(error.variable, "SCC_HANDLER_MAX_MESSAGE_BYTES");
        assert_eq!(error.value, DEFAULT_HANDLER_MAX_MESSAGE_BYTES.to_string());
        assert!(error.expected.contains("at least 10551296"), "{error}");

        // The alias counts the same.
        let alias: KafkaProperties =
            BTreeMap::from([("fetch.message.max.bytes".to_owned(), "10485760".to_owned())]).into();
        assert!(parse_handler_max_message_bytes(&Env(&vars), &alias).is_err());

        let raised = env(&[("SCC_HANDLER_MAX_MESSAGE_BYTES", "10551296")]);
        assert_eq!(parse_handler_max_message_bytes(&Env(&raised), &large_fetch), Ok(10_551_296));

        let small = env(&[("SCC_HANDLER_MAX_MESSAGE_BYTES", "1000000")]);
        let error = parse_handler_max_message_bytes(&Env(&small), &default).unwrap_err();
        assert_eq!(error.value, "1000000");
        assert!(error.expected.contains("at least 1114112"), "{error}");
    }

    #[test]
    fn unreadable_tls_file_names_variable_and_path() {
        let vars = env(&[("HANDLER_TLS_CA", "/nonexistent/kafka-scc/ca.pem")]);
        let error = parse_handler_tls(&Env(&vars)).unwrap_err();
        assert_eq!(error.variable, "HANDLER_TLS_CA");
        assert_eq!(error.value, "/nonexistent/kafka-scc/ca.pem");
        assert!(error.expected.contains("cannot be read"), "{error}");
    }

    #[test]
    fn invalid_server_name_is_rejected() {
        let vars = env(&[("HANDLER_TLS_SERVER_NAME", "not a name")]);
        let error = parse_handler_tls(&Env(&vars)).unwrap_err();
        assert_eq!(error.variable, "HANDLER_TLS_SERVER_NAME");
    }

    #[test]
    fn pem_file_debug_shows_path_only() {
        let file = PemFile { path: PathBuf::from("/etc/tls/key.pem"), pem: Arc::from(&b"SECRET-KEY-BYTES"[..]) };
        let shown = format!("{file:?}");
        assert!(shown.contains("/etc/tls/key.pem"), "{shown}");
        assert!(!shown.contains("SECRET-KEY-BYTES"), "{shown}");
    }
}
