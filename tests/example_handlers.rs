//! The Python and Node example handlers as a pod runs them: on a Unix domain socket, with the
//! standard gRPC health service, and restarting over the socket file that a killed handler
//! leaves behind.
//!
//! The test talks to each handler over the socket with a tonic client, so it does not depend on
//! kafka-scc's own handler client.

mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kafka_scc::proto::HandleRequest;
use kafka_scc::proto::message_handler_client::MessageHandlerClient;
use process::handlers::{HandlerKind, HandlerProcess, read_record, record_path};
use process::*;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The handler service's name, which kafka-scc requests from the health service.
const HANDLER_SERVICE: &str = "scc.handler.v1.MessageHandler";

/// Bound on one gRPC call to a handler that is listening.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a gRPC channel over the Unix domain socket at `socket`.
async fn unix_channel(socket: &Path) -> Channel {
    let socket: PathBuf = socket.to_owned();
    // The connector ignores the URI: every connection goes to the socket. The URI only fills
    // the :authority header.
    Endpoint::from_static("http://127.0.0.1:1")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .expect("connected to the handler's socket")
}

/// Returns the health status the handler reports for `service`.
async fn health_status(channel: &Channel, service: &str) -> ServingStatus {
    let request = HealthCheckRequest { service: service.to_owned() };
    let response = tokio::time::timeout(CALL_TIMEOUT, HealthClient::new(channel.clone()).check(request))
        .await
        .expect("health check answered in time")
        .unwrap_or_else(|status| panic!("health check for {service:?} failed: {status:?}"));
    response.into_inner().status()
}

fn serves_on_unix_socket(kind: HandlerKind) {
    let dir = TempDir::new("unix-handler");
    let socket = dir.path().join("handler.sock");
    let addr = format!("unix://{}", socket.display());
    let record = record_path(dir.path(), "calls");
    // A worker thread keeps driving the client's connections between calls, so they close when
    // the handler stops, as kafka-scc's would.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime built");

    let mut handler = HandlerProcess::start(kind, &addr, &record, 0);
    assert_eq!(handler.addr, addr, "{} printed another address", kind.name());
    runtime.block_on(async {
        let channel = unix_channel(&socket).await;
        assert_eq!(health_status(&channel, "").await, ServingStatus::Serving);
        assert_eq!(health_status(&channel, HANDLER_SERVICE).await, ServingStatus::Serving);

        let request =
            HandleRequest { topic: "events".to_owned(), partition: 1, offset: 7, attempt: 1, ..Default::default() };
        tokio::time::timeout(CALL_TIMEOUT, MessageHandlerClient::new(channel).handle(request))
            .await
            .expect("handle answered in time")
            .expect("handle returned OK");
    });
    let calls = read_record(&record);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!((calls[0].partition, calls[0].offset, calls[0].attempt), (1, 7, 1));
    assert_eq!(calls[0].code, "OK");

    // SIGKILL leaves the socket file in place, as a crashed container does in a shared volume.
    handler.process.kill();
    assert!(socket.exists(), "the killed {} removed its socket", kind.name());
    let mut restarted = HandlerProcess::start(kind, &addr, &record, 0);
    runtime.block_on(async {
        let channel = unix_channel(&socket).await;
        assert_eq!(health_status(&channel, HANDLER_SERVICE).await, ServingStatus::Serving);
    });

    restarted.process.terminate();
    let status = restarted.process.wait_exit(WAIT).expect("the handler exits after SIGTERM");
    assert!(status.success(), "{} exited with {status}", kind.name());
    assert!(!socket.exists(), "the {} left its socket after a clean stop", kind.name());
}

#[test]
fn python_handler_serves_on_unix_socket() {
    serves_on_unix_socket(HandlerKind::Python);
}

#[test]
fn node_handler_serves_on_unix_socket() {
    serves_on_unix_socket(HandlerKind::Node);
}
