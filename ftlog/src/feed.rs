//! Where a replay gets its records: a log file read to its end, or a stream arriving from a
//! primary over the network, whose receiver can say "here is more", "wait", or "no more will
//! come" as typed answers.

use crate::format::{LogError, LogHeader, LogReader, Record};
use std::io::Read;
use std::time::Duration;

/// One answer of a [`RecordFeed`].
#[derive(Debug)]
pub enum FeedItem {
    /// The next record, and the stream position just after it (the bytes of log up to and
    /// including it: what a backup acknowledges).
    Record { record: Record, position: u64 },
    /// Nothing yet; ask again (a live stream whose next record has not arrived).
    Wait,
    /// No record will ever come: the source ended cleanly at a record boundary (an open-ended log
    /// read to its end, a primary that closed the stream).
    Closed,
    /// No record will ever come: the source was lost (a primary that went silent or whose
    /// connection broke). What arrived before is complete.
    Lost(String),
    /// The source is damaged: the replay cannot trust anything from here on.
    Failed(LogError),
}

/// A source of log records for a replay.
pub trait RecordFeed {
    /// The header of the log the records belong to.
    fn header(&self) -> &LogHeader;

    /// The stream position after the last record taken (the header's length before the first).
    fn position(&self) -> u64;

    /// The next record or why there is none; may block for a short, bounded time.
    fn next_item(&mut self) -> FeedItem;
}

impl<R: Read> RecordFeed for LogReader<R> {
    fn header(&self) -> &LogHeader {
        LogReader::header(self)
    }

    fn position(&self) -> u64 {
        LogReader::offset(self)
    }

    /// Never `Wait`: a file is there or it is not.
    fn next_item(&mut self) -> FeedItem {
        match self.next() {
            Some(Ok((_, record))) => FeedItem::Record { record, position: LogReader::offset(self) },
            Some(Err(error)) => FeedItem::Failed(error),
            None => FeedItem::Closed,
        }
    }
}

/// A feed filled by another thread (the logging channel's receiver): the replay never blocks on
/// a socket, only on this channel, and for at most [`ChannelFeed::WAIT`] at a time.
pub struct ChannelFeed {
    header: LogHeader,
    items: crossbeam_channel::Receiver<FeedItem>,
    position: u64,
    /// Set once `Closed`, `Lost` or `Failed` was returned: every later call returns it again.
    ended: Option<EndedAs>,
}

#[derive(Clone)]
enum EndedAs {
    Closed,
    Lost(String),
}

/// The sending half of a [`ChannelFeed`]: push records as they arrive, then `Closed` or `Lost`.
/// Dropping it without either reads as `Lost`.
pub type FeedSender = crossbeam_channel::Sender<FeedItem>;

impl ChannelFeed {
    /// How long one [`RecordFeed::next_item`] waits before answering `Wait`.
    pub const WAIT: Duration = Duration::from_millis(10);

    /// A feed of `header`'s log whose records come through the returned sender, at most `bound`
    /// of them in flight (the sender blocks beyond: the receiver's buffer is bounded).
    /// `position` is the stream position before the first record.
    pub fn new(header: LogHeader, position: u64, bound: usize) -> (Self, FeedSender) {
        let (sender, items) = crossbeam_channel::bounded(bound);
        (Self { header, items, position, ended: None }, sender)
    }
}

impl ChannelFeed {
    /// Whether the feed said its end (closed or lost).
    pub fn has_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// Drops the next record if one is there now (a backup waiting for a resync's state keeps
    /// the receiver from blocking on a full feed); `false` if there was none.
    pub fn drop_one(&mut self) -> bool {
        if self.ended.is_some() {
            return false;
        }
        match self.items.try_recv() {
            Ok(FeedItem::Record { position, .. }) => {
                self.position = position;
                true
            }
            Ok(FeedItem::Wait) => true,
            Ok(FeedItem::Closed) => {
                self.ended = Some(EndedAs::Closed);
                false
            }
            Ok(FeedItem::Lost(reason)) => {
                self.ended = Some(EndedAs::Lost(reason));
                false
            }
            Ok(FeedItem::Failed(error)) => {
                self.ended = Some(EndedAs::Lost(error.to_string()));
                false
            }
            Err(_) => false,
        }
    }
}

impl RecordFeed for ChannelFeed {
    fn header(&self) -> &LogHeader {
        &self.header
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn next_item(&mut self) -> FeedItem {
        if let Some(ended) = &self.ended {
            return match ended.clone() {
                EndedAs::Closed => FeedItem::Closed,
                EndedAs::Lost(reason) => FeedItem::Lost(reason),
            };
        }
        let item = match self.items.recv_timeout(Self::WAIT) {
            Ok(item) => item,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => FeedItem::Wait,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                FeedItem::Lost("the receiver of the stream went away".into())
            }
        };
        match &item {
            FeedItem::Record { position, .. } => self.position = *position,
            FeedItem::Closed => self.ended = Some(EndedAs::Closed),
            FeedItem::Lost(reason) => self.ended = Some(EndedAs::Lost(reason.clone())),
            FeedItem::Failed(error) => self.ended = Some(EndedAs::Lost(error.to_string())),
            FeedItem::Wait => {}
        }
        item
    }
}
