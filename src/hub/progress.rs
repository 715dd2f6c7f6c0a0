//! Progress of a pull: a bar on a terminal (indicatif: file, bytes, rate,
//! ETA), plain log lines elsewhere (the journal), and a callback the daemon
//! turns into systemd's `STATUS=downloading 45%`.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How a pull shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A progress bar on stderr.
    Bar,
    /// A log line every few seconds.
    Log,
    /// Nothing but the callback.
    Quiet,
}

impl ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn for_stderr() -> ProgressMode {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressMode::Bar
        } else {
            ProgressMode::Log
        }
    }
}

/// Interval between log lines in [`ProgressMode::Log`].
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What the callback is told whenever the whole pull's percentage changes.
#[derive(Clone, Debug)]
pub struct ProgressUpdate<'a> {
    pub repo: &'a str,
    pub file: &'a str,
    pub percent: u8,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

type Callback = Box<dyn FnMut(&ProgressUpdate<'_>) + Send>;

/// The state of one pull across its files.
pub struct PullProgress {
    mode: ProgressMode,
    repo: String,
    bar: Option<ProgressBar>,
    callback: Option<Callback>,
    total: u64,
    /// Bytes of the files finished before the current one.
    before: u64,
    /// Bytes of the current file so far.
    current: u64,
    file: String,
    files: (usize, usize),
    started: Instant,
    last_log: Instant,
    last_percent: Option<u8>,
}

impl PullProgress {
    pub fn new(mode: ProgressMode, repo: &str) -> PullProgress {
        let now = Instant::now();
        PullProgress {
            mode,
            repo: repo.to_string(),
            bar: None,
            callback: None,
            total: 0,
            before: 0,
            current: 0,
            file: String::new(),
            files: (0, 0),
            started: now,
            last_log: now,
            last_percent: None,
        }
    }

    /// Also tell `f` each time the percentage changes.
    pub fn with_callback(mut self, f: impl FnMut(&ProgressUpdate<'_>) + Send + 'static) -> Self {
        self.callback = Some(Box::new(f));
        self
    }

    /// Starts the download part: `files` files of `total` bytes in all.
    pub fn begin(&mut self, files: usize, total: u64) {
        self.total = total;
        self.files = (0, files);
        self.started = Instant::now();
        self.last_log = self.started;
        if self.mode == ProgressMode::Bar {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{msg:40!} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            self.bar = Some(bar);
        }
    }

    pub(crate) fn start_file(&mut self, path: &str) {
        self.files.0 += 1;
        self.file = path.to_string();
        self.current = 0;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("[{}/{}] {}", self.files.0, self.files.1, path));
        }
    }

    /// Resets the current file's count (hf-hub calls this again on a resume
    /// and then reports the bytes already there).
    pub(crate) fn restart_file(&mut self) {
        self.current = 0;
        self.show(false);
    }

    pub(crate) fn add(&mut self, bytes: u64) {
        self.current += bytes;
        self.show(false);
    }

    pub(crate) fn finish_file(&mut self, size: u64) {
        self.before += size;
        self.current = 0;
        self.show(true);
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn done(&self) -> u64 {
        (self.before + self.current).min(self.total)
    }

    fn show(&mut self, file_done: bool) {
        let done = self.done();
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
        let percent = done
            .saturating_mul(100)
            .checked_div(self.total)
            .map_or(100, |p| p as u8);
        if self.mode == ProgressMode::Log
            && (self.last_log.elapsed() >= LOG_EVERY || (file_done && self.files.0 == self.files.1))
        {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                repo = %self.repo,
                file = %self.file,
                files = %format!("{}/{}", self.files.0, self.files.1),
                percent,
                done_mb = format!("{:.1}", done as f64 / 1e6),
                total_mb = format!("{:.1}", self.total as f64 / 1e6),
                rate_mb_s = format!("{:.1}", done as f64 / 1e6 / secs),
                "Downloading."
            );
        }
        if self.last_percent != Some(percent) {
            self.last_percent = Some(percent);
            if let Some(cb) = &mut self.callback {
                cb(&ProgressUpdate {
                    repo: &self.repo,
                    file: &self.file,
                    percent,
                    done_bytes: done,
                    total_bytes: self.total,
                });
            }
        }
    }
}

/// hf-hub's progress hook for one file, feeding the pull's progress.
pub(crate) struct FileProgress<'a>(pub(crate) &'a mut PullProgress);

impl hf_hub::api::Progress for FileProgress<'_> {
    fn init(&mut self, _size: usize, _filename: &str) {
        self.0.restart_file();
    }

    fn update(&mut self, size: usize) {
        self.0.add(size as u64);
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_callback_sees_each_percentage_of_the_whole_pull_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut p = PullProgress::new(ProgressMode::Quiet, "o/r")
            .with_callback(move |u| s.lock().unwrap().push(u.percent));
        p.begin(2, 200);
        p.start_file("a");
        p.add(50);
        p.add(50);
        // A resume: hf-hub starts the file's count again, then reports
        // what is already on disk.
        p.restart_file();
        p.add(100);
        p.finish_file(100);
        p.start_file("b");
        p.add(100);
        p.finish_file(100);
        p.finish();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, [25, 50, 0, 50, 100]);
    }

    #[test]
    fn the_bar_follows_the_whole_pull() {
        let mut p = PullProgress::new(ProgressMode::Bar, "o/r");
        p.begin(1, 10);
        p.start_file("onnx/a.onnx");
        p.add(4);
        let bar = p.bar.clone().unwrap();
        assert_eq!(bar.position(), 4);
        assert_eq!(bar.length(), Some(10));
        assert_eq!(bar.message(), "[1/1] onnx/a.onnx");
        p.add(6);
        p.finish_file(10);
        assert_eq!(bar.position(), 10);
        p.finish();
        assert!(bar.is_finished());
    }
}
