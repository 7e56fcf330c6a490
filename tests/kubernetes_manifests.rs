//! The Kubernetes example in `examples/kubernetes/` agrees with kafka-scc's configuration. The
//! grace period outlasts the shutdown, and the probes reach the HTTP listener. The handler
//! socket sits in a volume that both containers mount, `--config` names the mounted ConfigMap
//! file, and secrets come from a Secret rather than the ConfigMap.
//!
//! Effective values follow kafka-scc's precedence: a literal environment variable of the
//! kafka-scc container, else the ConfigMap's TOML key ([`SETTING_KEYS`]), else the default.
//!
//! The ConfigMap's file and the container's literal variables also pass kafka-scc's own
//! validation, as `--check-config` would run it in the pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kafka_scc::Config;
use kafka_scc::config::{SETTING_KEYS, is_secret_name};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The maximum time the example handlers take to stop after SIGTERM (`STOP_GRACE_SECONDS` in
/// `examples/python/server.py`, `STOP_GRACE_MS` in `examples/node/server.js`), in ms.
const HANDLER_STOP_MS: u64 = 5_000;

/// The kafka-scc container's name in the Deployment.
const SIDECAR: &str = "kafka-scc";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    spec: serde_yaml_ng::Value,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentSpec {
    selector: Selector,
    template: PodTemplate,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct PodTemplate {
    metadata: Metadata,
    spec: PodSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    termination_grace_period_seconds: Option<u64>,
    #[serde(default)]
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    liveness_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    startup_probe: Option<Probe>,
    restart_policy: Option<String>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    value: Option<String>,
    value_from: Option<EnvSource>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    secret_key_ref: Option<KeyRef>,
}

#[derive(Debug, Deserialize)]
struct KeyRef {
    name: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    name: Option<String>,
    container_port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: Option<HttpGet>,
}

#[derive(Debug, Deserialize)]
struct HttpGet {
    path: String,
    port: PortRef,
}

/// A probe's port: a number, or the name of a container port.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
    sub_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    config_map: Option<ConfigMapSource>,
    empty_dir: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
struct ConfigMapSource {
    name: String,
}

/// Every object of the example, with the Deployment's pod spec and its ConfigMap parsed.
struct Example {
    objects: Vec<Object>,
    deployment: DeploymentSpec,
}

impl Example {
    fn load() -> Example {
        let mut objects = Vec::new();
        for path in manifest_files() {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let object = Object::deserialize(document)
                    .unwrap_or_else(|error| panic!("{}: invalid manifest: {error}", path.display()));
                objects.push(object);
            }
        }
        let deployment = objects
            .iter()
            .find(|object| object.kind == "Deployment")
            .map(|object| from_value::<DeploymentSpec>(&object.spec))
            .expect("the example has a Deployment");
        Example { objects, deployment }
    }

    fn pod(&self) -> &PodSpec {
        &self.deployment.template.spec
    }

    fn sidecar(&self) -> &Container {
        self.pod().containers.iter().find(|container| container.name == SIDECAR).expect("a kafka-scc container")
    }

    /// Returns the handler: the one container besides kafka-scc.
    fn handler(&self) -> &Container {
        let others: Vec<&Container> = self
            .pod()
            .init_containers
            .iter()
            .chain(&self.pod().containers)
            .filter(|container| container.name != SIDECAR)
            .collect();
        assert_eq!(others.len(), 1, "expected one handler container besides kafka-scc");
        others[0]
    }

    /// Returns the path given to `--config`, the ConfigMap mounted there and the file's text.
    fn config_file(&self) -> (String, &Object, String) {
        let sidecar = self.sidecar();
        let position = sidecar.args.iter().position(|arg| arg == "--config").expect("kafka-scc gets --config");
        let path = sidecar.args.get(position + 1).expect("--config has a path").clone();
        let (directory, file_name) = path.rsplit_once('/').expect("an absolute --config path");

        let mount = sidecar
            .volume_mounts
            .iter()
            .find(|mount| mount.mount_path.trim_end_matches('/') == directory && mount.sub_path.is_none())
            .unwrap_or_else(|| panic!("no volume is mounted at {directory}, the directory of --config {path}"));
        let volume = self.volume(&mount.name);
        let config_map_name = &volume.config_map.as_ref().expect("the --config volume is a ConfigMap").name;
        let config_map = self
            .objects
            .iter()
            .find(|object| object.kind == "ConfigMap" && &object.metadata.name == config_map_name)
            .unwrap_or_else(|| panic!("ConfigMap {config_map_name} is not in the example"));
        let text = config_map
            .data
            .get(file_name)
            .unwrap_or_else(|| panic!("ConfigMap {config_map_name} has no key {file_name}, which --config names"))
            .clone();
        (path, config_map, text)
    }

    fn volume(&self, name: &str) -> &Volume {
        self.pod().volumes.iter().find(|volume| volume.name == name).unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// Returns kafka-scc's effective value of `variable`: the container's literal environment
    /// variable, else the configuration file's key.
    fn setting(&self, variable: &str) -> Option<String> {
        if let Some(env) = self.sidecar().env.iter().find(|env| env.name == variable) {
            return Some(env.value.clone().expect("the setting is a literal value"));
        }
        let (_, _, text) = self.config_file();
        let table: toml::Table = toml::from_str(&text).expect("the ConfigMap's configuration file is valid TOML");
        let (_, key) = SETTING_KEYS.iter().map(|(key, known)| (*known, *key)).find(|(known, _)| *known == variable)?;
        let (section, name) = key.split_once('.').expect("keys are section.name");
        match table.get(section)?.get(name)? {
            toml::Value::String(text) => Some(text.clone()),
            toml::Value::Integer(number) => Some(number.to_string()),
            other => panic!("{key} has an unexpected type: {other:?}"),
        }
    }
}

fn manifest_files() -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|error| panic!("{}: {error}", folder.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", folder.display());
    files
}

fn from_value<T: DeserializeOwned>(value: &serde_yaml_ng::Value) -> T {
    serde_yaml_ng::from_value(value.clone()).unwrap_or_else(|error| panic!("invalid object spec: {error}"))
}

/// Returns kafka-scc's defaults, from the configuration code itself.
fn defaults() -> Config {
    Config::from_vars([("KAFKA_TOPIC", "events")]).expect("the defaults are valid")
}

#[test]
fn grace_period_outlasts_shutdown() {
    let example = Example::load();
    let shutdown_ms = match example.setting("SCC_SHUTDOWN_TIMEOUT_MS") {
        Some(value) => value.parse::<u64>().expect("a whole number of milliseconds"),
        None => defaults().shutdown_timeout.as_millis() as u64,
    };
    let grace_seconds = example.pod().termination_grace_period_seconds.expect("terminationGracePeriodSeconds is set");

    assert!(
        grace_seconds * 1_000 > shutdown_ms + HANDLER_STOP_MS,
        "terminationGracePeriodSeconds {grace_seconds} leaves no margin over kafka-scc's {shutdown_ms} ms shutdown \
         and the handler's {HANDLER_STOP_MS} ms stop"
    );
}

#[test]
fn probes_reach_http_listener() {
    let example = Example::load();
    let sidecar = example.sidecar();
    let http_addr: std::net::SocketAddr = match example.setting("SCC_HTTP_ADDR") {
        Some(value) => value.parse().expect("SCC_HTTP_ADDR is ip:port, not off"),
        None => defaults().http_addr.expect("the default listener is on"),
    };
    // The kubelet probes the pod's address, so a loopback listener would fail every probe.
    assert!(http_addr.ip().is_unspecified(), "SCC_HTTP_ADDR {http_addr} is not reachable from the kubelet");

    for (probe, path) in [(&sidecar.liveness_probe, "/healthz"), (&sidecar.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|probe| probe.http_get.as_ref()).expect("an HTTP probe");
        assert_eq!(get.path, path);
        let port = match &get.port {
            PortRef::Number(number) => *number,
            PortRef::Name(name) => {
                sidecar
                    .ports
                    .iter()
                    .find(|port| port.name.as_deref() == Some(name.as_str()))
                    .unwrap_or_else(|| panic!("the probe names port {name}, which the container does not declare"))
                    .container_port
            }
        };
        assert_eq!(port, http_addr.port(), "the {path} probe");
    }
}

#[test]
fn handler_socket_is_shared() {
    let example = Example::load();
    let endpoint = example.setting("HANDLER_ENDPOINT").expect("HANDLER_ENDPOINT is set");
    let socket = endpoint.strip_prefix("unix://").expect("the handler endpoint is a unix:// socket");
    let sidecar_mount = example
        .sidecar()
        .volume_mounts
        .iter()
        .find(|mount| socket.starts_with(&format!("{}/", mount.mount_path.trim_end_matches('/'))))
        .unwrap_or_else(|| panic!("no volume of kafka-scc contains the socket {socket}"));
    let relative = &socket[sidecar_mount.mount_path.trim_end_matches('/').len()..];
    assert!(example.volume(&sidecar_mount.name).empty_dir.is_some(), "the socket volume is an emptyDir");

    let handler = example.handler();
    let handler_mount = handler
        .volume_mounts
        .iter()
        .find(|mount| mount.name == sidecar_mount.name)
        .unwrap_or_else(|| panic!("the handler does not mount volume {}", sidecar_mount.name));
    let listen = handler.env.iter().find(|env| env.name == "HANDLER_ADDR").and_then(|env| env.value.clone());
    let expected = format!("unix://{}{relative}", handler_mount.mount_path.trim_end_matches('/'));
    assert_eq!(listen.as_deref(), Some(expected.as_str()), "the handler's HANDLER_ADDR");
}

#[test]
fn handler_outlives_sidecar() {
    let example = Example::load();
    let handler = example.handler();

    // A native sidecar gets SIGTERM only after the main containers have exited, so the handler
    // serves kafka-scc's whole drain, and it starts before them once its startupProbe passes.
    assert!(
        example.pod().init_containers.iter().any(|container| container.name == handler.name),
        "the handler is not an init container"
    );
    assert_eq!(handler.restart_policy.as_deref(), Some("Always"), "the handler is not a native sidecar");
    assert!(handler.startup_probe.is_some(), "kafka-scc would start before the handler listens");
}

#[test]
fn config_file_comes_from_configmap() {
    let example = Example::load();
    let (path, config_map, text) = example.config_file();

    let table: toml::Table = toml::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"));
    let properties = table.get("kafka").and_then(|kafka| kafka.get("properties")).and_then(toml::Value::as_table);
    for name in properties.into_iter().flat_map(|properties| properties.keys()) {
        assert!(!is_secret_name(name), "ConfigMap {} holds the secret {name}", config_map.metadata.name);
    }
}

#[test]
fn configuration_passes_validation() {
    let example = Example::load();
    let (path, _, text) = example.config_file();
    let mut env: Vec<(String, String)> = example
        .sidecar()
        .env
        .iter()
        .filter_map(|env| env.value.clone().map(|value| (env.name.clone(), value)))
        .collect();
    // The Secret's value is not in the repository; any non-empty password validates the same.
    env.push(("KAFKA_CFG_SASL_PASSWORD".to_owned(), "placeholder".to_owned()));

    let loaded = kafka_scc::config::load_str(&path, &text, env);
    assert!(loaded.is_ok(), "{path}: {:?}", loaded.err());
}

#[test]
fn password_comes_from_secret() {
    let example = Example::load();
    let password = example
        .sidecar()
        .env
        .iter()
        .find(|env| env.name == "KAFKA_CFG_SASL_PASSWORD")
        .expect("KAFKA_CFG_SASL_PASSWORD is set");

    assert!(password.value.is_none(), "the password is written into the manifest");
    let secret = password.value_from.as_ref().and_then(|source| source.secret_key_ref.as_ref());
    let secret = secret.expect("the password comes from a secretKeyRef");
    assert!(!secret.name.is_empty(), "the secretKeyRef names no Secret");
    assert!(!secret.key.is_empty(), "the secretKeyRef names no key");
}

#[test]
fn disruption_budget_selects_the_pods() {
    let example = Example::load();
    let pod_labels = &example.deployment.template.metadata.labels;
    for (name, value) in &example.deployment.selector.match_labels {
        assert_eq!(pod_labels.get(name), Some(value), "the Deployment's selector misses its own pods");
    }

    for budget in example.objects.iter().filter(|object| object.kind == "PodDisruptionBudget") {
        let selector: Selector = from_value(&budget.spec["selector"]);
        for (name, value) in &selector.match_labels {
            assert_eq!(
                pod_labels.get(name),
                Some(value),
                "PodDisruptionBudget {} selects no pod",
                budget.metadata.name
            );
        }
    }
}
