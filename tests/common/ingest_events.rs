//! Helpers for ingest tests: waiting for events and frames with deadlines.

#![allow(dead_code)]

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use florence_edge::ingest::{CameraEvent, CameraState, Frame};

/// Waits for an event of `camera` reaching `state`; returns it with every
/// event seen on the way (in order).
pub fn wait_for_state(
    events: &Receiver<CameraEvent>,
    camera: &str,
    state: CameraState,
    within: Duration,
) -> Result<(CameraEvent, Vec<CameraEvent>), Vec<CameraEvent>> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if e.camera == camera && e.to == state => return Ok((e, seen)),
            Ok(e) => seen.push(e),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                return Err(seen)
            }
        }
    }
}

/// Collects frames for `window` (after the first frame arrives within `first_within`).
pub fn collect_frames(
    frames: &Receiver<Frame>,
    first_within: Duration,
    window: Duration,
) -> Vec<Frame> {
    let mut out = Vec::new();
    match frames.recv_timeout(first_within) {
        Ok(f) => out.push(f),
        Err(_) => return out,
    }
    let deadline = Instant::now() + window;
    while let Ok(f) = frames.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out.push(f);
    }
    out
}

/// Drains whatever frames are waiting.
pub fn drain(frames: &Receiver<Frame>) -> usize {
    frames.try_iter().count()
}

/// State sequence of a list of events, for assertion messages.
pub fn states(events: &[CameraEvent]) -> Vec<(CameraState, CameraState, Option<String>)> {
    events
        .iter()
        .map(|e| (e.from, e.to, e.reason.clone()))
        .collect()
}
