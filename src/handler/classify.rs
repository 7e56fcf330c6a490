//! The pause predicate: the one place that decides whether a failed handler call is
//! pause-eligible or non-pausing.
//!
//! Rules, in order:
//! 1. kafka-scc's own deadline expired: pause-eligible.
//! 2. No response came from the handler (connection refused or reset, HTTP/2 error): pause-eligible,
//!    whatever code the client library reports for it. tonic reports some of these as `Unknown`
//!    or `Cancelled`; it marks every status it builds from a local error by attaching that error
//!    as the status's `source`, while a status decoded from the handler's response has none.
//! 3. The handler answered with a code in the configured pause set: pause-eligible.
//! 4. Any other code: non-pausing.

use std::collections::HashSet;
use std::error::Error as _;
use std::time::Duration;

use tonic::{Code, Status};

use super::{Disposition, HandlerError};

/// The default pause-eligible codes. CANCELLED means that the call ended before the handler
/// finished the message, as when a gRPC server that is stopping cancels the calls still queued,
/// so committing it would lose the message. The last three mean the handler cannot take any
/// message, and committing the stream unread would lose it.
pub const DEFAULT_PAUSE_CODES: &[Code] = &[
    Code::Unavailable,
    Code::DeadlineExceeded,
    Code::ResourceExhausted,
    Code::Aborted,
    Code::Cancelled,
    Code::Unimplemented,
    Code::Unauthenticated,
    Code::PermissionDenied,
];

const ALL_CODES: &[Code] = &[
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The failure of a handler call, before classification.
#[derive(Debug)]
pub enum CallFailure {
    /// kafka-scc's own deadline (`SCC_HANDLER_TIMEOUT_MS`) expired.
    Timeout(Duration),
    /// The call ended with a status, from the handler or from the client library.
    Status(Status),
}

/// Classifies a failed call; see the module documentation for the rules.
pub fn classify(failure: &CallFailure, pause_codes: &HashSet<Code>) -> HandlerError {
    match failure {
        CallFailure::Timeout(limit) => HandlerError::pause_eligible(
            Some(Code::DeadlineExceeded),
            format!("no answer within {} ms", limit.as_millis()),
        ),
        CallFailure::Status(status) if is_transport_failure(status) => {
            let mut parts = vec![status.message().to_owned()];
            if let Some(source) = status.source() {
                parts.extend(error_chain(source));
            }
            // Some transport errors display as an empty string, and a wrapper often repeats its
            // cause's text, whole or inside its own; neither adds anything to the log line.
            let mut distinct_parts: Vec<String> = Vec::with_capacity(parts.len());
            for part in parts {
                if !part.is_empty() && !distinct_parts.iter().any(|earlier| earlier.contains(part.as_str())) {
                    distinct_parts.push(part);
                }
            }
            let message = distinct_parts.join(": ");
            HandlerError { disposition: Disposition::PauseEligible, code: Some(status.code()), message }
        }
        CallFailure::Status(status) => {
            let disposition =
                if pause_codes.contains(&status.code()) { Disposition::PauseEligible } else { Disposition::NonPausing };
            HandlerError { disposition, code: Some(status.code()), message: status.message().to_owned() }
        }
    }
}

/// Returns true when tonic built the status from a local transport error instead of decoding
/// it from the handler's response.
pub(crate) fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some()
}

/// Returns the text of `error` and of each of its causes, outermost first.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut texts = vec![error.to_string()];
    let mut current = error.source();
    while let Some(cause) = current {
        texts.push(cause.to_string());
        current = cause.source();
    }
    texts
}

/// Returns the canonical upper-case name of a code, as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Parses a code name, ignoring case.
pub fn parse_code(name: &str) -> Option<Code> {
    ALL_CODES.iter().copied().find(|code| code_name(*code).eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> HashSet<Code> {
        DEFAULT_PAUSE_CODES.iter().copied().collect()
    }

    #[test]
    fn handler_codes_follow_pause_set() {
        for code in ALL_CODES.iter().copied().filter(|code| *code != Code::Ok) {
            let error = classify(&CallFailure::Status(Status::new(code, "x")), &defaults());
            let expected =
                if DEFAULT_PAUSE_CODES.contains(&code) { Disposition::PauseEligible } else { Disposition::NonPausing };
            assert_eq!(error.disposition, expected, "{}", code_name(code));
            assert_eq!(error.code, Some(code));
        }
    }

    #[test]
    fn own_timeout_is_pause_eligible() {
        let error = classify(&CallFailure::Timeout(Duration::from_millis(250)), &HashSet::new());
        assert!(error.is_pause_eligible());
        assert!(error.message.contains("250 ms"), "{}", error.message);
    }

    #[test]
    fn transport_message_skips_empty_parts() {
        /// An error that displays as an empty string and wraps a real cause.
        #[derive(Debug)]
        struct Blank(std::io::Error);
        impl std::fmt::Display for Blank {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                Ok(())
            }
        }
        impl std::error::Error for Blank {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }

        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let status = Status::from_error(Box::new(Blank(io)));
        let error = classify(&CallFailure::Status(status), &HashSet::new());
        assert_eq!(error.message, "No such file or directory");
    }

    #[test]
    fn transport_message_drops_repeated_cause() {
        /// An error whose text ends with its cause's text, as hyper's body errors do.
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "error reading a body: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }

        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let status = Status::from_error(Box::new(Wrapper(io)));
        let error = classify(&CallFailure::Status(status), &HashSet::new());
        assert_eq!(error.message, "error reading a body: broken pipe");
    }

    #[test]
    fn transport_message_drops_cause_repeated_later() {
        /// An error with its own text and an optional cause, to build any chain.
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|cause| cause as &(dyn std::error::Error + 'static))
            }
        }

        // The chain that tonic reports for a refused connection repeats its first text two
        // levels down.
        let refused = Layer("Connection refused", None);
        let connect = Layer("tcp connect error", Some(Box::new(refused)));
        let transport = Layer("transport error", Some(Box::new(connect)));
        let status = Status::from_error(Box::new(Layer("tcp connect error", Some(Box::new(transport)))));
        let error = classify(&CallFailure::Status(status), &HashSet::new());
        assert_eq!(error.message, "tcp connect error: transport error: Connection refused");
    }

    #[test]
    fn transport_error_is_pause_eligible_whatever_code() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        let status = Status::from_error(Box::new(io));
        assert_eq!(status.code(), Code::Unknown);
        let error = classify(&CallFailure::Status(status), &HashSet::new());
        assert!(error.is_pause_eligible());
        assert!(error.message.contains("connection reset"), "{}", error.message);
    }

    #[test]
    fn custom_pause_set_replaces_defaults() {
        let codes: HashSet<Code> = [Code::Internal].into_iter().collect();
        let internal = classify(&CallFailure::Status(Status::internal("boom")), &codes);
        let unavailable = classify(&CallFailure::Status(Status::unavailable("down")), &codes);
        assert!(internal.is_pause_eligible());
        assert!(!unavailable.is_pause_eligible());
    }

    #[test]
    fn code_names_round_trip() {
        for code in ALL_CODES {
            assert_eq!(parse_code(code_name(*code)), Some(*code));
        }
        assert_eq!(parse_code("deadline_exceeded"), Some(Code::DeadlineExceeded));
        assert_eq!(parse_code("NOPE"), None);
    }
}
