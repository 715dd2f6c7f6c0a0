//! The `florence-edge model …` commands' output: what `main` prints for
//! pull, list and verify.

use std::io::Write;
use std::path::Path;

use super::progress::{ProgressMode, PullProgress};
use super::pull::{pull, PullOptions};
use super::store::ModelStore;
use super::verify::verify;
use super::Selection;

/// `model pull`: pulls, logs a summary on stderr and prints the verified
/// directory on stdout (so `dir=$(florence-edge model pull …)` works).
pub fn pull_command(opts: &PullOptions) -> anyhow::Result<()> {
    tracing::info!(
        repo = %opts.model.repo,
        revision = %opts.model.revision,
        variant = opts.selection.variant.name(),
        decoder = opts.selection.layout_name(),
        dir = %opts.cache_dir.display(),
        endpoint = %opts.endpoint,
        "Pulling a model."
    );
    let mut progress = PullProgress::new(ProgressMode::for_stderr(), &opts.model.repo);
    let report = pull(opts, &mut progress)?;
    tracing::info!(
        repo = %opts.model.repo,
        commit = %report.commit,
        files = report.downloaded.len() + report.kept.len(),
        downloaded = report.downloaded.len(),
        already_there = report.kept.len(),
        size_mb = format!("{:.1}", report.bytes as f64 / 1e6),
        dir = %report.dir.display(),
        "Model pulled and verified. In the configuration: [model] id = \"{}\"{}{}, or dir = \"{}\".",
        opts.model.repo,
        if opts.model.revision == "main" { String::new() } else { format!(", revision = \"{}\"", opts.model.revision) },
        if opts.selection.variant.name() == "fp32" { String::new() } else { format!(", precision = \"{}\"", opts.selection.variant.name()) },
        report.dir.display()
    );
    writeln!(std::io::stdout(), "{}", report.dir.display())?;
    Ok(())
}

/// `model list`: a table, or JSON with `json`.
pub fn list_command(dir: &Path, json: bool) -> anyhow::Result<()> {
    let store = ModelStore::new(dir);
    let snapshots = store.list()?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&snapshots)?)?;
        return Ok(());
    }
    if snapshots.is_empty() {
        writeln!(
            out,
            "No models in {}. Fetch one with: florence-edge model pull onnx-community/Florence-2-base-ft --dir {}",
            dir.display(),
            dir.display()
        )?;
        return Ok(());
    }
    let rows: Vec<[String; 7]> = snapshots
        .iter()
        .map(|s| {
            [
                s.repo.clone(),
                if s.revisions.is_empty() {
                    "-".into()
                } else {
                    s.revisions.join(",")
                },
                s.commit.chars().take(12).collect(),
                if s.verified.is_empty() {
                    "no".into()
                } else {
                    s.verified.join(",")
                },
                if s.variants_present.is_empty() {
                    "-".into()
                } else {
                    s.variants_present.join(",")
                },
                format!("{:.1} MB", s.bytes as f64 / 1e6),
                s.path.display().to_string(),
            ]
        })
        .collect();
    let header = [
        "REPO", "REVISION", "COMMIT", "VERIFIED", "ON DISK", "SIZE", "PATH",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    for s in &snapshots {
        for p in &s.problems {
            writeln!(
                out,
                "{} {}: {p}",
                s.repo,
                &s.commit.chars().take(12).collect::<String>()
            )?;
        }
    }
    Ok(())
}

/// `model verify`: every problem on stderr, an error when there is one.
pub fn verify_command(
    dir: &Path,
    only: Option<&Selection>,
    ort_library: Option<&Path>,
) -> anyhow::Result<()> {
    let report = verify(dir, only, ort_library);
    for p in &report.problems {
        eprintln!("{}: {p}", dir.display());
    }
    if !report.ok() {
        anyhow::bail!(
            "{}: {} problem(s); a pulled model can be fetched again with `florence-edge model pull`",
            dir.display(),
            report.problems.len()
        );
    }
    writeln!(
        std::io::stdout(),
        "{}: {} file(s) verified; loads as {}",
        dir.display(),
        report.files_checked,
        report.loaded.join(", ")
    )?;
    Ok(())
}
