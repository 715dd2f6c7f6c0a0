//! florence-edge: cameras in, Florence-2 results out.
//!
//! The modules follow the data flow of DESIGN.md §1: `ingest` (GStreamer) →
//! `preprocess` → `florence2` (model, prompts, generation) on a `runtime`
//! (ONNX Runtime) → `postprocess` (token text → boxes, quads, polygons).

pub mod backoff;
pub mod bench;
pub mod config;
pub mod control;
#[cfg(feature = "gstreamer")]
pub mod daemon;
pub mod florence2;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod hub;
pub mod ingest;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
pub mod publish;
pub mod runtime;
pub mod scene;
pub mod schedule;
pub mod service;
pub mod settings;
pub mod sync;
