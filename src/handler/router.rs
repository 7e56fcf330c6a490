//! Per-topic handlers: a [`Handler`] that passes each message to the handler of its topic.
//!
//! Every subscribed topic maps to exactly one handler, and topics that share an endpoint share
//! one client, so one HTTP/2 channel. Only endpoints that some topic uses get a client, so
//! start-up never waits for an unused handler. A message from a topic without a route would
//! mean that the subscription and the routes disagree; it fails as non-pausing and names the
//! topic, because closing the gate for it would stop every partition and no retry could help.
//!
//! The router changes only where a call goes. The handlers share the pipeline's in-flight limit
//! and its one gate, so a pause-eligible failure from any of them pauses every topic. A batch is
//! split by route: each handler gets the messages of its topics as one batch of its own, the
//! handlers run concurrently, and the results come back in the order of the whole batch.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;

use super::{GrpcHandler, Handler, HandlerError, Readiness};
use crate::config::{Config, ConfigError, TopicRoutes};
use crate::message::Message;

/// Routes each message to the handler configured for its topic.
#[derive(Debug)]
pub struct TopicRouter<H> {
    handlers: Vec<EndpointHandler<H>>,
    /// Index into `handlers` for every subscribed topic.
    topics: HashMap<String, usize>,
}

#[derive(Debug)]
struct EndpointHandler<H> {
    endpoint: String,
    handler: H,
}

impl<H: Handler> TopicRouter<H> {
    /// Builds the router for `topics`: each topic goes to its endpoint in `routes`, or else to
    /// `default_endpoint`. `connect` creates the handler of one endpoint and is called once per
    /// distinct endpoint in use.
    pub fn build<E>(
        topics: &[String],
        default_endpoint: &str,
        routes: &TopicRoutes,
        mut connect: impl FnMut(&str) -> Result<H, E>,
    ) -> Result<TopicRouter<H>, E> {
        let mut handlers: Vec<EndpointHandler<H>> = Vec::new();
        let mut by_topic = HashMap::new();
        for topic in topics {
            let endpoint = routes.endpoint(topic).unwrap_or(default_endpoint);
            let index = match handlers.iter().position(|route| route.endpoint == endpoint) {
                Some(index) => index,
                None => {
                    handlers.push(EndpointHandler { endpoint: endpoint.to_owned(), handler: connect(endpoint)? });
                    handlers.len() - 1
                }
            };
            by_topic.insert(topic.clone(), index);
        }
        Ok(TopicRouter { handlers, topics: by_topic })
    }

    /// Returns the endpoint that `topic`'s messages go to, if the topic is routed.
    pub fn endpoint(&self, topic: &str) -> Option<&str> {
        self.topics.get(topic).map(|index| self.handlers[*index].endpoint.as_str())
    }

    /// Returns the distinct endpoints in use, in the order of the first topic using each.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.handlers.iter().map(|route| route.endpoint.as_str())
    }
}

impl<H: Handler> Handler for TopicRouter<H> {
    async fn handle(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        match self.topics.get(&*message.topic) {
            Some(index) => self.handlers[*index].handler.handle(message, attempt).await,
            None => Err(unrouted(message)),
        }
    }

    /// Splits the batch by route and calls each route's handler with its share.
    ///
    /// NOTE: the batch's results all return together, so when only some routes take batches,
    /// a route that sends its share as separate Handle calls still waits for the slowest call of
    /// the batch. Per-record results would need a streaming batch interface.
    async fn handle_batch(&self, batch: &[(&Message, u32)]) -> Vec<Result<(), HandlerError>> {
        // The positions in `batch` of each handler's messages.
        let mut positions: Vec<Vec<usize>> = vec![Vec::new(); self.handlers.len()];
        let mut results: Vec<Option<Result<(), HandlerError>>> = vec![None; batch.len()];
        for (position, (message, _)) in batch.iter().enumerate() {
            match self.topics.get(&*message.topic) {
                Some(index) => positions[*index].push(position),
                None => results[position] = Some(Err(unrouted(message))),
            }
        }

        let calls = self.handlers.iter().zip(&positions).filter(|(_, positions)| !positions.is_empty()).map(
            |(route, positions)| async move {
                let entries: Vec<(&Message, u32)> = positions.iter().map(|position| batch[*position]).collect();
                (positions, route.handler.handle_batch(&entries).await)
            },
        );
        for (positions, route_results) in join_all(calls).await {
            for (position, result) in positions.iter().zip(route_results) {
                results[*position] = Some(result);
            }
        }
        results.into_iter().map(|result| result.unwrap_or_else(|| Err(missing_result()))).collect()
    }

    /// Returns the largest batch that any of the handlers takes.
    fn max_batch_len(&self) -> usize {
        self.handlers.iter().map(|route| route.handler.max_batch_len()).max().unwrap_or(1)
    }

    /// Waits for every handler at once, each for at most `timeout`. The result is `TimedOut`
    /// when any handler timed out, naming each such endpoint, else `Unknown` when any handler
    /// has no health service, else `Ready`.
    async fn wait_until_ready(&self, timeout: Duration) -> Readiness {
        if let [only] = self.handlers.as_slice() {
            return only.handler.wait_until_ready(timeout).await;
        }
        let checks = self
            .handlers
            .iter()
            .map(|route| async move { (route.endpoint.as_str(), route.handler.wait_until_ready(timeout).await) });
        combine_readiness(join_all(checks).await)
    }
}

/// Returns the failure of a message whose topic has no route.
fn unrouted(message: &Message) -> HandlerError {
    HandlerError::non_pausing(
        None,
        format!("no handler is configured for topic {}; it is not among the subscribed topics", message.topic),
    )
}

/// Returns the failure of a message that its handler's batch left without a result, which
/// breaks the [`Handler::handle_batch`] contract.
fn missing_result() -> HandlerError {
    HandlerError::non_pausing(Some(tonic::Code::Internal), "the handler returned no result for this message")
}

fn combine_readiness(results: Vec<(&str, Readiness)>) -> Readiness {
    let timed_out: Vec<String> = results
        .iter()
        .filter_map(|(endpoint, readiness)| match readiness {
            Readiness::TimedOut(reason) => Some(format!("{endpoint}: {reason}")),
            _ => None,
        })
        .collect();
    if !timed_out.is_empty() {
        return Readiness::TimedOut(timed_out.join("; "));
    }
    if results.iter().any(|(_, readiness)| *readiness == Readiness::Unknown) {
        Readiness::Unknown
    } else {
        Readiness::Ready
    }
}

/// Creates the gRPC handler clients of `config` and `routes` without connecting yet: one per
/// distinct endpoint, all over the configured handler transport (TLS settings, message size
/// limit) and with the same deadline, group id and pause codes.
///
/// This is the one place where the binary creates [`GrpcHandler`]s.
pub fn connect_grpc(config: &Config, routes: &TopicRoutes) -> Result<TopicRouter<GrpcHandler>, ConfigError> {
    TopicRouter::build(&config.topics, &config.handler_endpoint, routes, |endpoint| {
        let variable = if endpoint == config.handler_endpoint { "HANDLER_ENDPOINT" } else { "topics.handler_endpoint" };
        GrpcHandler::for_endpoint(config, variable, endpoint)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::*;
    use crate::handler::Disposition;
    use crate::message::TimestampType;

    /// The endpoint and topic of every call, in call order.
    type CallLog = Arc<Mutex<Vec<(String, String)>>>;

    /// A handler that records the topics it was called for and reports a fixed readiness.
    #[derive(Clone)]
    struct Recorder {
        endpoint: String,
        calls: CallLog,
        /// The topics of every batch this handler received, in call order.
        batches: Arc<Mutex<Vec<Vec<String>>>>,
        readiness: Readiness,
    }

    impl Handler for Recorder {
        async fn handle(&self, message: &Message, _attempt: u32) -> Result<(), HandlerError> {
            self.calls.lock().unwrap().push((self.endpoint.clone(), message.topic.to_string()));
            Ok(())
        }

        async fn handle_batch(&self, batch: &[(&Message, u32)]) -> Vec<Result<(), HandlerError>> {
            let topics = batch.iter().map(|(message, _)| message.topic.to_string()).collect();
            self.batches.lock().unwrap().push(topics);
            crate::handler::handle_each(self, batch).await
        }

        fn max_batch_len(&self) -> usize {
            if self.endpoint == "p" { 8 } else { 1 }
        }

        async fn wait_until_ready(&self, _timeout: Duration) -> Readiness {
            self.readiness.clone()
        }
    }

    fn message(topic: &str) -> Message {
        Message {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            key: None,
            value: Some(Bytes::from_static(b"{}")),
            headers: Vec::new(),
            timestamp_ms: 0,
            timestamp_type: TimestampType::CreateTime,
            trace_id: crate::message::new_trace_id(),
        }
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    /// Builds a router of recorders that report `readiness(endpoint)`; returns it, the shared
    /// call log and the endpoints that were connected, in order.
    fn router(
        names: &[&str],
        routes: &[(&str, &str)],
        readiness: impl Fn(&str) -> Readiness,
    ) -> (TopicRouter<Recorder>, CallLog, Vec<String>) {
        let calls = Arc::default();
        let mut connected = Vec::new();
        let router =
            TopicRouter::build(&topics(names), "default", &TopicRoutes::new(routes.iter().copied()), |endpoint| {
                connected.push(endpoint.to_owned());
                Ok::<_, std::convert::Infallible>(Recorder {
                    endpoint: endpoint.to_owned(),
                    calls: Arc::clone(&calls),
                    batches: Arc::default(),
                    readiness: readiness(endpoint),
                })
            })
            .unwrap();
        (router, calls, connected)
    }

    #[tokio::test]
    async fn messages_go_to_their_topics_handler() {
        let (router, calls, connected) =
            router(&["payments", "refunds", "audit"], &[("payments", "p"), ("audit", "p")], |_| Readiness::Ready);
        assert_eq!(connected, vec!["p", "default"]);
        assert_eq!(router.endpoint("refunds"), Some("default"));

        for topic in ["payments", "refunds", "audit"] {
            router.handle(&message(topic), 1).await.unwrap();
        }
        let calls = calls.lock().unwrap().clone();
        let expected = [("p", "payments"), ("default", "refunds"), ("p", "audit")];
        let expected: Vec<(String, String)> =
            expected.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        assert_eq!(calls, expected);
    }

    #[tokio::test]
    async fn batch_splits_by_route_in_order() {
        let (router, calls, _) =
            router(&["payments", "refunds", "audit"], &[("payments", "p"), ("audit", "p")], |_| Readiness::Ready);
        assert_eq!(router.max_batch_len(), 8);
        let messages = [message("payments"), message("refunds"), message("other"), message("audit")];
        let batch: Vec<(&Message, u32)> = messages.iter().map(|message| (message, 1)).collect();

        let results = router.handle_batch(&batch).await;

        assert_eq!(results.len(), 4);
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(results[1].is_ok(), "{:?}", results[1]);
        let unrouted = results[2].as_ref().unwrap_err();
        assert_eq!(unrouted.disposition, Disposition::NonPausing);
        assert!(unrouted.message.contains("other"), "{unrouted}");
        assert!(results[3].is_ok(), "{:?}", results[3]);

        let batches_of = |endpoint: &str| {
            let route = router.handlers.iter().find(|route| route.endpoint == endpoint).unwrap();
            route.handler.batches.lock().unwrap().clone()
        };
        assert_eq!(batches_of("p"), vec![vec!["payments".to_owned(), "audit".to_owned()]]);
        assert_eq!(batches_of("default"), vec![vec!["refunds".to_owned()]]);
        assert_eq!(calls.lock().unwrap().len(), 3, "the unrouted message reached a handler");
    }

    #[test]
    fn unused_default_gets_no_client() {
        let (router, _, connected) = router(&["payments"], &[("payments", "p")], |_| Readiness::Ready);
        assert_eq!(connected, vec!["p"]);
        assert_eq!(router.endpoints().collect::<Vec<_>>(), vec!["p"]);
    }

    #[tokio::test]
    async fn unrouted_topic_fails_without_pausing() {
        let (router, calls, _) = router(&["payments"], &[], |_| Readiness::Ready);
        let error = router.handle(&message("other"), 1).await.unwrap_err();
        assert_eq!(error.disposition, Disposition::NonPausing);
        assert!(error.message.contains("other"), "{error}");
        assert!(calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn readiness_waits_for_every_handler() {
        let (all_ready, _, _) = router(&["a", "b"], &[("b", "b")], |_| Readiness::Ready);
        assert_eq!(all_ready.wait_until_ready(Duration::ZERO).await, Readiness::Ready);

        let (one_unknown, _, _) =
            router(
                &["a", "b"],
                &[("b", "b")],
                |endpoint| {
                    if endpoint == "b" { Readiness::Unknown } else { Readiness::Ready }
                },
            );
        assert_eq!(one_unknown.wait_until_ready(Duration::ZERO).await, Readiness::Unknown);

        let (one_late, _, _) = router(&["a", "b"], &[("b", "b")], |endpoint| {
            if endpoint == "b" { Readiness::TimedOut("NOT_SERVING".to_owned()) } else { Readiness::Unknown }
        });
        assert_eq!(one_late.wait_until_ready(Duration::ZERO).await, Readiness::TimedOut("b: NOT_SERVING".to_owned()));
    }

    #[test]
    fn invalid_endpoint_is_named() {
        let config = Config::from_vars([("KAFKA_TOPIC", "payments")]).unwrap();
        let error = connect_grpc(&config, &TopicRoutes::new([("payments", "http://[::1")])).unwrap_err();
        assert_eq!(error.value, "http://[::1");
    }
}
