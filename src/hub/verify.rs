//! `model verify DIR`: every recorded file re-hashed, then the
//! model-directory contract checked the way `run` checks it (the model
//! loaded on the CPU: files, JSON, tokenizer, every graph's tensor names,
//! types and ranks), for each variant and decoder layout the directory
//! holds. Every problem is collected and named.

use std::path::Path;

use super::select::Selection;
use super::store::{needed_files, parse_key, sha256_file, variants_on_disk, ModelStore, RECORD};
use crate::florence2::{DecoderLayout, LoadOptions, Variant};
use crate::runtime::Backend;

/// What `verify` found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Files whose size (and SHA-256 where one is recorded) matched.
    pub files_checked: usize,
    /// `variant/layout` pairs that loaded.
    pub loaded: Vec<String>,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `dir`. `only`: just this selection; otherwise every selection
/// the record says was pulled, or for a directory without a record (one
/// copied by hand) every variant on disk with each decoder layout it has.
pub fn verify(dir: &Path, only: Option<&Selection>, ort_library: Option<&Path>) -> VerifyReport {
    let mut report = VerifyReport::default();
    if !dir.is_dir() {
        report
            .problems
            .push(format!("{} is not a directory", dir.display()));
        return report;
    }
    let record = ModelStore::read_record(dir);
    if dir.join(RECORD).is_file() && record.is_none() {
        report.problems.push(format!(
            "{} does not read as a record of a pull; delete it and pull again",
            dir.join(RECORD).display()
        ));
    }
    if let Some(r) = &record {
        for (path, want) in &r.files {
            let p = dir.join(path);
            match std::fs::metadata(&p) {
                Err(e) => report.problems.push(format!("{path}: {e}")),
                Ok(m) if m.len() != want.size => report.problems.push(format!(
                    "{path}: {} bytes, the pull verified {}",
                    m.len(),
                    want.size
                )),
                Ok(_) => match (&want.sha256, sha256_file(&p)) {
                    (_, Err(e)) => report.problems.push(format!("{path}: {e}")),
                    (Some(w), Ok(got)) if &got != w => report.problems.push(format!(
                        "{path}: SHA-256 {got}, the Hub listed {w}: the file changed on disk"
                    )),
                    _ => report.files_checked += 1,
                },
            }
        }
    }
    let selections: Vec<Selection> = match (only, &record) {
        (Some(s), _) => vec![s.clone()],
        (None, Some(r)) if !r.complete.is_empty() => {
            r.complete.iter().filter_map(|k| parse_key(k)).collect()
        }
        _ => on_disk(dir),
    };
    if selections.is_empty() {
        report.problems.push(format!(
            "{} has no onnx/vision_encoder*.onnx: not a Florence-2 model directory in the onnx-community layout",
            dir.display()
        ));
    }
    for s in &selections {
        let key = super::store::selection_key(s);
        if let (Some(r), true) = (&record, only.is_none()) {
            for path in needed_files(r, s) {
                if !r.files.contains_key(&path) {
                    report
                        .problems
                        .push(format!("{key}: {path} is not among the verified files"));
                }
            }
        }
        let mut opts = LoadOptions::new(dir);
        opts.backend = Backend::Cpu;
        opts.variant = s.variant.clone();
        opts.layout = s.layout;
        opts.ort_library = ort_library.map(Path::to_path_buf);
        opts.intra_threads = 1;
        match crate::pipeline::Pipeline::load(&opts) {
            Ok(_) => report.loaded.push(key),
            Err(e) => report.problems.push(format!("{key}: {e:#}")),
        }
    }
    report
}

/// Every variant on disk, with each decoder layout whose graphs it has.
fn on_disk(dir: &Path) -> Vec<Selection> {
    let mut out = Vec::new();
    for v in variants_on_disk(dir) {
        let Ok(variant) = Variant::parse(&v) else {
            continue;
        };
        for layout in [DecoderLayout::Split, DecoderLayout::Merged] {
            let s = Selection {
                variant: variant.clone(),
                layout,
            };
            let last = s.stems()[s.stems().len() - 1];
            if dir
                .join(super::select::graph_path(last, &s.variant))
                .is_file()
            {
                out.push(s);
            }
        }
    }
    out
}
