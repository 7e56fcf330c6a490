//! The HandleBatch path of [`GrpcHandler`]: splitting a batch into calls, sending them, and
//! turning the per-record results into [`HandlerError`]s.
//!
//! Contract, as `proto/scc/handler/v1/handler.proto` states it for handler authors:
//! - A HandleBatch call carries at least two records; a single record goes as a Handle call,
//!   with its `traceparent` metadata. A batch call carries no `traceparent` metadata, because
//!   its records belong to different traces and each carries its own `trace_id`.
//! - Every call stays within `SCC_HANDLER_BATCH_MAX` records and `SCC_HANDLER_MAX_MESSAGE_BYTES`
//!   bytes. A record whose own Handle request is over the byte limit is never sent and fails
//!   non-pausing, as it does on the unary path.
//! - A failure of the whole call is classified once, like a failed Handle call, and applies to
//!   every record of that call. UNIMPLEMENTED from the handler is the exception: it means that
//!   the handler has no HandleBatch, so the records are sent again at once as Handle calls and
//!   every later batch goes as Handle calls too.
//! - A response with a result count other than the record count is INTERNAL for every record.

use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use prost::Message as _;
use tonic::Status;
use tracing::{info, warn};

use super::{GrpcHandler, means_unimplemented};

/// How long the start-up HandleBatch probe may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
use crate::handler::classify::{CallFailure, classify};
use crate::handler::{HandlerError, handle_each};
use crate::message::Message;
use crate::proto::{HandleBatchRequest, HandleRequest, RecordResult};

/// The field number of `records` in `HandleBatchRequest`.
const RECORDS_FIELD: u32 = 1;

/// One call that a batch is split into, covering the next records of the batch in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// This many records, sent in one call: HandleBatch for two or more, Handle for one.
    Records(usize),
    /// One record whose Handle request alone is `size` bytes, over the limit; it is not sent.
    Oversized { size: usize },
}

impl Piece {
    fn len(self) -> usize {
        match self {
            Piece::Records(count) => count,
            Piece::Oversized { .. } => 1,
        }
    }
}

impl GrpcHandler {
    /// Sends `batch` as HandleBatch calls, split by [`split_batch`] and run concurrently, and
    /// returns one result per message in the order of `batch`. While the HandleStream stream is
    /// in use, or once the handler has returned UNIMPLEMENTED for HandleBatch, each message goes
    /// through [`Handler::handle`](crate::handler::Handler::handle) instead.
    pub(super) async fn send_batch(&self, batch: &[(&Message, u32)]) -> Vec<Result<(), HandlerError>> {
        let stream_in_use = self.stream.usable();
        if batch.len() < 2 || self.batch_max < 2 || stream_in_use || self.batch_unsupported.load(Ordering::Relaxed) {
            return handle_each(self, batch).await;
        }

        let records: Vec<HandleRequest> =
            batch.iter().map(|(message, attempt)| self.record(message, *attempt)).collect();
        let sizes: Vec<usize> = records.iter().map(HandleRequest::encoded_len).collect();
        let pieces = split_batch(&sizes, self.batch_max, self.max_message_bytes);

        let mut records = records.into_iter();
        let mut start = 0;
        let mut calls = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let end = start + piece.len();
            let piece_records: Vec<HandleRequest> = records.by_ref().take(piece.len()).collect();
            calls.push(self.send_piece(piece, &batch[start..end], piece_records));
            start = end;
        }
        join_all(calls).await.into_iter().flatten().collect()
    }

    /// Sends one piece of a batch; `entries` and `records` are its messages and their request
    /// bodies. Returns one result per message.
    async fn send_piece(
        &self,
        piece: Piece,
        entries: &[(&Message, u32)],
        records: Vec<HandleRequest>,
    ) -> Vec<Result<(), HandlerError>> {
        match piece {
            Piece::Oversized { size } => vec![Err(self.oversized(size))],
            // A Handle call carries the record's `traceparent` metadata, which a batch cannot.
            Piece::Records(1) => handle_each(self, entries).await,
            Piece::Records(_) => self.call_handle_batch(entries, records).await,
        }
    }

    /// Makes one HandleBatch call with two or more records.
    async fn call_handle_batch(
        &self,
        entries: &[(&Message, u32)],
        records: Vec<HandleRequest>,
    ) -> Vec<Result<(), HandlerError>> {
        let count = records.len();
        let mut request = tonic::Request::new(HandleBatchRequest { records });
        request.set_timeout(self.timeout);
        let mut client = self.client.clone();

        match self.call(client.handle_batch(request)).await {
            Ok(response) => self.record_results(response.results, count),
            Err(CallFailure::Status(status)) if means_unimplemented(&status) => {
                self.stop_batching(&status);
                handle_each(self, entries).await
            }
            Err(failure) => vec![Err(classify(&failure, &self.pause_codes)); count],
        }
    }

    /// Maps the results of a HandleBatch response to one result per record, checking that
    /// there are `count` of them.
    fn record_results(&self, results: Vec<RecordResult>, count: usize) -> Vec<Result<(), HandlerError>> {
        if results.len() != count {
            let status = Status::internal(format!(
                "the handler returned {} results for a batch of {count} records",
                results.len()
            ));
            return vec![Err(classify(&CallFailure::Status(status), &self.pause_codes)); count];
        }
        results.into_iter().map(|result| self.record_result(result)).collect()
    }

    /// Asks the handler, with one HandleBatch call that carries no records, whether it
    /// implements the method. Learning it before the first real batch means that no batch of
    /// records waits on a fallback. Any response but UNIMPLEMENTED leaves batching on, and the
    /// first real batch decides.
    pub(super) async fn probe_handle_batch(&self) {
        if self.batch_max < 2 || self.batch_unsupported.load(Ordering::Relaxed) {
            return;
        }
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(HandleBatchRequest { records: Vec::new() });
        request.set_timeout(PROBE_TIMEOUT);
        match tokio::time::timeout(PROBE_TIMEOUT, client.handle_batch(request)).await {
            Ok(Ok(_)) => info!(
                endpoint = %self.endpoint, batch_max = self.batch_max,
                "the handler implements HandleBatch; records that are ready together go in one call"
            ),
            Ok(Err(status)) if means_unimplemented(&status) => self.stop_batching(&status),
            Ok(Err(status)) => warn!(
                endpoint = %self.endpoint, %status,
                "the HandleBatch probe failed; batching stays on until a batch call returns UNIMPLEMENTED"
            ),
            Err(_) => warn!(
                endpoint = %self.endpoint, timeout_ms = PROBE_TIMEOUT.as_millis() as u64,
                "the HandleBatch probe timed out; batching stays on until a batch call returns UNIMPLEMENTED"
            ),
        }
    }

    /// Records that the handler has no HandleBatch; logs it the first time.
    fn stop_batching(&self, status: &Status) {
        if !self.batch_unsupported.swap(true, Ordering::Relaxed) {
            info!(
                endpoint = %self.endpoint, grpc.message = %status.message(),
                "the handler does not implement HandleBatch; sending every message with Handle from now on"
            );
        }
    }
}

/// Splits records with Handle request sizes `sizes` (bytes), in order, into pieces of at most
/// `max_len` records whose HandleBatch request stays within `max_bytes`. A record over
/// `max_bytes` on its own becomes a [`Piece::Oversized`] piece and ends the piece before it.
fn split_batch(sizes: &[usize], max_len: usize, max_bytes: usize) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut count = 0;
    let mut bytes = 0;
    for &size in sizes {
        if size > max_bytes {
            if count > 0 {
                pieces.push(Piece::Records(count));
            }
            pieces.push(Piece::Oversized { size });
            (count, bytes) = (0, 0);
            continue;
        }

        let framed = framed_len(size);
        if count > 0 && (count == max_len || bytes + framed > max_bytes) {
            pieces.push(Piece::Records(count));
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes += framed;
    }
    if count > 0 {
        pieces.push(Piece::Records(count));
    }
    pieces
}

/// Returns the bytes that a record of `size` bytes adds to a `HandleBatchRequest`: its field
/// key, its length prefix and itself.
fn framed_len(size: usize) -> usize {
    prost::encoding::key_len(RECORDS_FIELD) + prost::encoding::encoded_len_varint(size as u64) + size
}

#[cfg(test)]
mod split_tests {
    use super::*;

    fn record(value_len: usize) -> HandleRequest {
        HandleRequest { topic: "t".to_owned(), value: Some(vec![b'x'; value_len].into()), ..HandleRequest::default() }
    }

    #[test]
    fn split_respects_record_count() {
        assert_eq!(split_batch(&[10; 5], 2, 1_000), vec![Piece::Records(2), Piece::Records(2), Piece::Records(1)]);
        assert_eq!(split_batch(&[10; 3], 64, 1_000), vec![Piece::Records(3)]);
    }

    #[test]
    fn split_keeps_requests_within_bytes() {
        let records: Vec<HandleRequest> = [100, 300, 250, 20, 500, 10].into_iter().map(record).collect();
        let sizes: Vec<usize> = records.iter().map(HandleRequest::encoded_len).collect();
        let limit = 600;

        let pieces = split_batch(&sizes, 64, limit);
        let mut start = 0;
        for piece in &pieces {
            let Piece::Records(count) = *piece else {
                panic!("no record is over the limit: {pieces:?}");
            };
            let request = HandleBatchRequest { records: records[start..start + count].to_vec() };
            assert!(request.encoded_len() <= limit, "{piece:?} at {start} is {} bytes", request.encoded_len());
            start += count;
        }
        assert_eq!(start, records.len());
        assert!(pieces.len() > 1, "{pieces:?}");
    }

    #[test]
    fn oversized_record_stands_alone() {
        let pieces = split_batch(&[10, 10, 2_000, 10], 64, 1_000);
        assert_eq!(pieces, vec![Piece::Records(2), Piece::Oversized { size: 2_000 }, Piece::Records(1)]);
    }

    #[test]
    fn framed_length_matches_encoding() {
        for value_len in [0, 100, 200, 20_000] {
            let record = record(value_len);
            let request = HandleBatchRequest { records: vec![record.clone()] };
            assert_eq!(framed_len(record.encoded_len()), request.encoded_len(), "value of {value_len} bytes");
        }
    }
}
