//! A bounded, on-disk queue of messages waiting for the broker.
//!
//! One file per message, named `{id:020}-{spooled_unix_ms}.msg`: the id orders
//! them (oldest first), the time gives the age of the oldest without opening
//! anything, and a restart finds the queue by listing the directory. A message
//! is written to `{id}.tmp` and renamed, so a crash mid-write leaves a `.tmp`
//! that the next start removes, never a half message. Files are not fsynced:
//! a killed process loses nothing (the page cache survives it); a power cut may
//! lose the last seconds.
//!
//! Entries stay on disk until the broker acknowledges them: [`Spool::next_unsent`]
//! hands one out, [`Spool::ack`] deletes it, and [`Spool::rewind`] (after a
//! lost connection) makes every unacknowledged entry due again.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::settings::QualityOfService;

/// A spool file could not be written, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool file {path} is not a spooled message ({reason}); it was removed")]
    Corrupt { path: PathBuf, reason: &'static str },
}

/// What the spool keeps of one publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpooledMessage {
    pub topic: String,
    pub qos: QualityOfService,
    pub retain: bool,
    pub payload: Vec<u8>,
}

const MAGIC: &str = "florence-edge-spool 1";

impl SpooledMessage {
    fn encode(&self) -> Vec<u8> {
        let header = format!(
            "{MAGIC} qos={} retain={}\n{}\n",
            self.qos.level(),
            u8::from(self.retain),
            self.topic
        );
        let mut bytes = Vec::with_capacity(header.len() + self.payload.len());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&self.payload);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<SpooledMessage, &'static str> {
        let (first, rest) = split_line(bytes).ok_or("no header line")?;
        let (topic, payload) = split_line(rest).ok_or("no topic line")?;
        let first = std::str::from_utf8(first).map_err(|_| "header is not UTF-8")?;
        let fields = first
            .strip_prefix(MAGIC)
            .ok_or("unknown header (not written by this version)")?;
        let mut qos = None;
        let mut retain = None;
        for field in fields.split_whitespace() {
            match field.split_once('=') {
                Some(("qos", v)) => {
                    qos = v.parse::<u8>().ok().and_then(QualityOfService::from_level)
                }
                Some(("retain", "0")) => retain = Some(false),
                Some(("retain", "1")) => retain = Some(true),
                _ => return Err("unknown header field"),
            }
        }
        let topic = std::str::from_utf8(topic).map_err(|_| "topic is not UTF-8")?;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err("topic is empty or has a wildcard");
        }
        Ok(SpooledMessage {
            topic: topic.to_owned(),
            qos: qos.ok_or("missing or bad qos")?,
            retain: retain.ok_or("missing or bad retain flag")?,
            payload: payload.to_vec(),
        })
    }
}

fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    Some((&bytes[..newline], &bytes[newline + 1..]))
}

/// What [`Spool::open`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolOpened {
    /// Messages found from an earlier run.
    pub recovered: u64,
    /// Half-written files removed.
    pub removed_partial: u64,
    /// Oldest messages dropped because the spool held more than its bound
    /// (the bound was lowered between runs).
    pub dropped_over_bound: u64,
}

/// The bounded on-disk queue. Not thread-safe: the publisher thread owns it.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_messages: u64,
    /// id → spooled_unix_ms, oldest first.
    entries: BTreeMap<u64, u64>,
    next_id: u64,
    /// Smallest id not yet handed out since the last rewind.
    cursor: u64,
    opened: SpoolOpened,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and indexes what an
    /// earlier run left there.
    pub fn open(dir: &Path, max_messages: u64) -> Result<Spool, SpoolError> {
        let io_err = |source| SpoolError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let mut entries = BTreeMap::new();
        let mut opened = SpoolOpened::default();
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                if fs::remove_file(entry.path()).is_ok() {
                    opened.removed_partial += 1;
                }
            } else if let Some((id, at)) = parse_file_name(name) {
                entries.insert(id, at);
            }
        }
        let next_id = entries.keys().next_back().map_or(1, |id| id + 1);
        opened.recovered = entries.len() as u64;
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_messages: max_messages.max(1),
            entries,
            next_id,
            cursor: 0,
            opened,
        };
        while spool.len() > spool.max_messages {
            spool.drop_oldest();
            spool.opened.dropped_over_bound += 1;
        }
        Ok(spool)
    }

    pub fn opened(&self) -> SpoolOpened {
        self.opened
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Messages on disk, handed out or not.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some message has not been handed out since the last rewind.
    pub fn has_unsent(&self) -> bool {
        self.entries.range(self.cursor..).next().is_some()
    }

    /// When the oldest message was spooled, ms since the Unix epoch.
    pub fn oldest_spooled_unix_ms(&self) -> Option<u64> {
        self.entries.values().next().copied()
    }

    /// Appends `message` as the newest entry. Returns the number of oldest
    /// entries dropped to stay within the bound (0 or 1).
    pub fn append(
        &mut self,
        message: &SpooledMessage,
        now_unix_ms: u64,
    ) -> Result<u64, SpoolError> {
        let id = self.next_id;
        let tmp = self.dir.join(format!("{id:020}.tmp"));
        let path = self.dir.join(file_name(id, now_unix_ms));
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&message.encode())?;
            drop(file);
            fs::rename(&tmp, &path)
        };
        if let Err(source) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::Io { path, source });
        }
        self.next_id += 1;
        self.entries.insert(id, now_unix_ms);
        let mut dropped = 0;
        while self.len() > self.max_messages {
            self.drop_oldest();
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Hands out the oldest message not handed out yet. A file that cannot be
    /// read or parsed is removed and reported as an error (with its id), so one
    /// bad file cannot block the queue.
    pub fn next_unsent(&mut self) -> Option<(u64, Result<SpooledMessage, SpoolError>)> {
        let (&id, &at) = self.entries.range(self.cursor..).next()?;
        self.cursor = id + 1;
        let path = self.dir.join(file_name(id, at));
        let read = match fs::read(&path) {
            Ok(bytes) => SpooledMessage::decode(&bytes).map_err(|reason| SpoolError::Corrupt {
                path: path.clone(),
                reason,
            }),
            Err(source) => Err(SpoolError::Io {
                path: path.clone(),
                source,
            }),
        };
        if read.is_err() {
            self.entries.remove(&id);
            let _ = fs::remove_file(&path);
        }
        Some((id, read))
    }

    /// The broker has the message: delete it.
    pub fn ack(&mut self, id: u64) {
        if let Some(at) = self.entries.remove(&id) {
            let _ = fs::remove_file(self.dir.join(file_name(id, at)));
        }
    }

    /// Makes every entry due again (the connection that carried them is gone).
    pub fn rewind(&mut self) {
        self.cursor = 0;
    }

    fn drop_oldest(&mut self) {
        if let Some((id, at)) = self.entries.pop_first() {
            let _ = fs::remove_file(self.dir.join(file_name(id, at)));
        }
    }
}

fn file_name(id: u64, spooled_unix_ms: u64) -> String {
    format!("{id:020}-{spooled_unix_ms}.msg")
}

fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".msg")?;
    let (id, at) = stem.split_once('-')?;
    if id.len() != 20 {
        return None;
    }
    Some((id.parse().ok()?, at.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u32) -> SpooledMessage {
        SpooledMessage {
            topic: "fe/cam/od".to_owned(),
            qos: QualityOfService::AtLeastOnce,
            retain: false,
            payload: format!("{{\"sequence\":{n}}}").into_bytes(),
        }
    }

    fn drain(spool: &mut Spool) -> Vec<(u64, SpooledMessage)> {
        let mut out = Vec::new();
        while let Some((id, read)) = spool.next_unsent() {
            out.push((id, read.expect("readable")));
        }
        out
    }

    #[test]
    fn messages_come_back_oldest_first_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 100).expect("open");
        for n in 0..5 {
            assert_eq!(
                spool
                    .append(&message(n), 1000 + u64::from(n))
                    .expect("append"),
                0
            );
        }
        assert_eq!(spool.oldest_spooled_unix_ms(), Some(1000));
        drop(spool);

        let mut spool = Spool::open(dir.path(), 100).expect("reopen");
        assert_eq!(spool.opened().recovered, 5);
        let got = drain(&mut spool);
        let payloads: Vec<_> = got.iter().map(|(_, m)| m.payload.clone()).collect();
        let expected: Vec<_> = (0..5).map(|n| message(n).payload).collect();
        assert_eq!(payloads, expected);
        assert_eq!(got[0].1, message(0));
        // New entries after a reopen sort after the old ones.
        spool.append(&message(5), 2000).expect("append");
        let next = drain(&mut spool);
        assert_eq!(next.len(), 1);
        assert!(next[0].0 > got[4].0);
    }

    #[test]
    fn entries_stay_until_acknowledged_and_rewind_hands_them_out_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 100).expect("open");
        for n in 0..3 {
            spool.append(&message(n), 1).expect("append");
        }
        let handed = drain(&mut spool);
        assert!(!spool.has_unsent());
        spool.ack(handed[0].0);
        assert_eq!(spool.len(), 2);
        spool.rewind();
        let again = drain(&mut spool);
        assert_eq!(
            again.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [handed[1].0, handed[2].0]
        );
        spool.ack(again[0].0);
        spool.ack(again[1].0);
        assert!(spool.is_empty());
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn overflow_drops_the_oldest_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 3).expect("open");
        let dropped: u64 = (0..5)
            .map(|n| spool.append(&message(n), u64::from(n)).expect("append"))
            .sum();
        assert_eq!(dropped, 2);
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.oldest_spooled_unix_ms(), Some(2));
        let got: Vec<_> = drain(&mut spool)
            .into_iter()
            .map(|(_, m)| m.payload)
            .collect();
        assert_eq!(got, (2..5).map(|n| message(n).payload).collect::<Vec<_>>());
        drop(spool);
        let smaller = Spool::open(dir.path(), 1).expect("reopen smaller");
        assert_eq!(smaller.opened().dropped_over_bound, 2);
        assert_eq!(smaller.len(), 1);
    }

    #[test]
    fn corrupt_and_partial_files_are_removed_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 10).expect("open");
        spool.append(&message(0), 1).expect("append");
        spool.append(&message(1), 2).expect("append");
        drop(spool);
        let first = dir.path().join(file_name(1, 1));
        fs::write(&first, b"garbage without newline").expect("corrupt");
        fs::write(dir.path().join("00000000000000000009.tmp"), b"half").expect("tmp");
        fs::write(dir.path().join("notes.txt"), b"left alone").expect("other");

        let mut spool = Spool::open(dir.path(), 10).expect("reopen");
        assert_eq!(spool.opened().removed_partial, 1);
        let (_, bad) = spool.next_unsent().expect("entry");
        let err = bad.expect_err("corrupt");
        assert!(err.to_string().contains("no header line"), "{err}");
        assert!(!first.exists());
        let (_, good) = spool.next_unsent().expect("entry");
        assert_eq!(good.expect("readable"), message(1));
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn header_fields_are_checked() {
        let ok = message(1).encode();
        assert_eq!(SpooledMessage::decode(&ok), Ok(message(1)));
        let bad_qos = b"florence-edge-spool 1 qos=3 retain=0\nfe/c/od\n{}";
        assert_eq!(SpooledMessage::decode(bad_qos), Err("missing or bad qos"));
        let wildcard = b"florence-edge-spool 1 qos=1 retain=0\nfe/+/od\n{}";
        assert!(SpooledMessage::decode(wildcard).is_err());
        let other = b"something else\nfe/c/od\n{}";
        assert!(SpooledMessage::decode(other).is_err());
    }
}
