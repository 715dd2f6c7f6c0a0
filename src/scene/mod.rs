//! Scene building blocks for issue 16, pure and independent of GStreamer, the daemon and the
//! configuration: plain data in, plain data out, tested on synthetic frames.
//!
//! - [`zone`]: zones as polygons in normalized frame coordinates — point and box tests, the
//!   pixel crop a zone task feeds the model, the exact mapping of crop coordinates back to the
//!   frame, which detections a zone keeps ([`ZoneFilter`]), and the location bins of a region
//!   prompt ([`region_bins`], DESIGN.md §3).
//! - [`motion`]: the per-camera change detector, a state machine fed each decoded frame's luma
//!   (the Y plane where the pipeline has one, [`rgb_to_luma`] otherwise), with a threshold, a
//!   minimum changed area and motion masks; it tells whether the scene changed, so a task with
//!   `when = "changed"` can skip the model on a still picture.
//! - [`privacy`]: privacy masks, filled black in the decoded frame before anything reads it.
//! - [`events`]: the per-camera event state machines: `new` / `update` / `end` of a label,
//!   debounced (`min_hits` consecutive results, gone for `end_after`), the retained per-label
//!   counts, and one event per meaningful change of a text task's text.
//!
//! Nothing here touches GStreamer, threads or clocks: the ingest feeds frames in, the
//! scheduler reads the verdicts and counters.

pub mod events;
pub mod motion;
pub mod privacy;
pub mod zone;

pub use events::{
    BestResult, Detection, Event, EventKind, EventSettings, EventTracker, TextEvent, TextTracker,
    TextWatch,
};
pub use motion::{rgb_to_luma, ChangeDetector, ChangeSettings, LumaView, Verdict};
pub use zone::{keeps, region_bins, CropRect, NormRect, Polygon, ZoneError, ZoneFilter};
