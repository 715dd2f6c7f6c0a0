//! `florence-edge install-service`: puts the binary, the systemd unit, the
//! sysusers file, the example configuration and the state directories in place
//! on a machine without the Debian package.
//!
//! Everything goes below `root` (`/` normally), so an install can be rehearsed
//! in a temporary directory or aimed at an image being prepared, and a dry run
//! reports what would happen without touching anything. A user's configuration
//! is never overwritten. Files are replaced by renaming a complete temporary
//! file over them: systemd never reads half a unit, and replacing the binary of
//! a running daemon does not fail with "text file busy".
//!
//! This file holds the paths, the unit rendering, the checks and the steps of
//! an install; the file operations themselves are in `install_files.rs`.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use super::install_files::{install_binary, put_dir, put_file, under_root, Policy};

/// The committed unit, as the Debian package installs it (binary in
/// [`PACKAGED_BIN_DIR`]); [`render_unit`] points it at another directory.
pub const UNIT_TEMPLATE: &str = include_str!("../../systemd/florence-edge.service");
/// systemd-sysusers lines creating the service user in `video` and `render`.
pub const SYSUSERS: &str = include_str!("../../systemd/florence-edge.sysusers");
/// Drop-in that opens the device policy on a Jetson, whose GPU device groups
/// have board-specific names (see the file's comments).
pub const JETSON_DROP_IN: &str = include_str!("../../systemd/jetson.conf");
/// Written as the configuration when there is none yet.
pub const EXAMPLE_CONFIG: &str = include_str!("../../configs/example.toml");

/// File name of the executable, in every bin directory.
pub const BINARY_NAME: &str = "florence-edge";
/// Where the Debian package puts the binary; the paths [`UNIT_TEMPLATE`] names.
pub const PACKAGED_BIN_DIR: &str = "/usr/bin";
/// Where `install-service` puts the binary unless told otherwise: outside the
/// package manager's territory.
pub const DEFAULT_BIN_DIR: &str = "/usr/local/bin";
/// The unit's name, for `systemctl`.
pub const UNIT_NAME: &str = "florence-edge.service";
/// The administrator's unit directory: a local install must not write into
/// /usr/lib/systemd/system, which belongs to packages.
pub const UNIT_PATH: &str = "/etc/systemd/system/florence-edge.service";
/// Where the Jetson drop-in goes.
pub const JETSON_DROP_IN_PATH: &str = "/etc/systemd/system/florence-edge.service.d/jetson.conf";
/// The administrator's sysusers directory, for the same reason as [`UNIT_PATH`].
pub const SYSUSERS_PATH: &str = "/etc/sysusers.d/florence-edge.conf";
/// The unit's `ConfigurationDirectory=`.
pub const CONFIG_DIR: &str = "/etc/florence-edge";
/// The file the unit's `ExecStart=` and `ExecStartPre=` name.
pub const CONFIG_PATH: &str = "/etc/florence-edge/florence-edge.toml";
/// Present on every Jetson Linux (L4T) system; selects [`JETSON_DROP_IN`].
pub const JETSON_MARKER: &str = "/etc/nv_tegra_release";
/// The unit's `StateDirectory=` entries. Created here so the model can be
/// copied into `models/` before the first start; systemd hands them to the
/// service user at start (it changes the owner when it does not match).
pub const STATE_DIRS: [&str; 4] = [
    "/var/lib/florence-edge",
    "/var/lib/florence-edge/models",
    "/var/lib/florence-edge/engines",
    "/var/lib/florence-edge/spool",
];

/// Directories the unit hides from the service (`ProtectHome=yes`,
/// `PrivateTmp=yes`): a binary there could not be started.
const HIDDEN_FROM_SERVICE: [&str; 5] = ["/home", "/root", "/run/user", "/tmp", "/var/tmp"];

/// The unit keys whose command line starts with the binary's path.
const EXEC_KEYS: [&str; 7] = [
    "ExecCondition",
    "ExecStartPre",
    "ExecStart",
    "ExecStartPost",
    "ExecReload",
    "ExecStop",
    "ExecStopPost",
];

const CONFIG_DIR_MODE: u32 = 0o755;
/// As the unit's `StateDirectoryMode=`.
const STATE_DIR_MODE: u32 = 0o750;

/// What to install, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// Where the file system starts: `/` for this machine, or a directory
    /// holding an image being prepared (or a test's temporary directory).
    pub root: PathBuf,
    /// The executable to copy, normally `std::env::current_exe()`.
    pub binary: PathBuf,
    /// Directory (as seen from `root`) the binary goes to; the unit's
    /// `ExecStart=` and `ExecStartPre=` are rewritten to it.
    pub bin_dir: PathBuf,
    /// Report what would be done and change nothing.
    pub dry_run: bool,
}

impl InstallOptions {
    /// Installing `binary` on this machine, into [`DEFAULT_BIN_DIR`].
    pub fn system(binary: PathBuf) -> Self {
        Self {
            root: PathBuf::from("/"),
            binary,
            bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            dry_run: false,
        }
    }
}

/// What an installed path is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Binary,
    Unit,
    JetsonDropIn,
    Sysusers,
    ConfigDir,
    Config,
    StateDir,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Item::Binary => "binary",
            Item::Unit => "systemd unit",
            Item::JetsonDropIn => "Jetson drop-in",
            Item::Sysusers => "sysusers.d entry for the service user",
            Item::ConfigDir => "configuration directory",
            Item::Config => "configuration",
            Item::StateDir => "state directory",
        })
    }
}

/// What happened to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The file was created or replaced.
    Written,
    /// The file already had exactly this content (or is the running binary).
    Unchanged,
    /// The file exists and is the user's: never overwritten.
    Kept,
    /// The directory was created.
    Created,
    /// The directory already existed.
    Exists,
    /// Dry run: the file would be created or replaced.
    WouldWrite,
    /// Dry run: the directory would be created.
    WouldCreate,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Written => "written",
            Action::Unchanged => "unchanged",
            Action::Kept => "kept",
            Action::Created => "created",
            Action::Exists => "exists",
            Action::WouldWrite => "would write",
            Action::WouldCreate => "would create",
        })
    }
}

/// One path the install looked after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPath {
    pub item: Item,
    /// The path as the installed system sees it, e.g. `/etc/florence-edge/florence-edge.toml`.
    pub path: PathBuf,
    /// Where it is on this machine: `path` below the install root.
    pub location: PathBuf,
    pub action: Action,
}

/// Whether a follow-up command was run, and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// `install` ran it and it succeeded.
    Done,
    /// `install` ran it and it failed; how.
    Failed(String),
    /// Left to the operator; why.
    ToRun(String),
}

/// A command that completes the install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextStep {
    /// A shell command line.
    pub command: String,
    pub outcome: StepOutcome,
}

/// Every path with what was done to it, and the commands that finish the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub root: PathBuf,
    pub dry_run: bool,
    pub paths: Vec<InstalledPath>,
    pub next_steps: Vec<NextStep>,
}

impl InstallReport {
    /// What was done to `path` (as the installed system sees it).
    pub fn action_of(&self, path: &Path) -> Option<Action> {
        self.paths.iter().find(|p| p.path == path).map(|p| p.action)
    }
}

impl fmt::Display for InstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.dry_run { ", dry run" } else { "" };
        writeln!(
            f,
            "florence-edge install-service (root {}{mode}):",
            self.root.display()
        )?;
        for p in &self.paths {
            let note = match (p.item, p.action) {
                (Item::Config, Action::Kept) => ": yours, not overwritten",
                (Item::Config, Action::Written | Action::WouldWrite) => {
                    ": the example; edit it before starting"
                }
                _ => "",
            };
            writeln!(
                f,
                "  {:<12} {} ({}{note})",
                p.action.to_string(),
                p.location.display(),
                p.item
            )?;
        }
        writeln!(f, "Next:")?;
        for step in &self.next_steps {
            match &step.outcome {
                StepOutcome::Done => writeln!(f, "  done         {}", step.command)?,
                StepOutcome::Failed(why) => {
                    writeln!(f, "  FAILED       {}: {why}; run it yourself", step.command)?
                }
                StepOutcome::ToRun(why) => writeln!(f, "  to run       {}  # {why}", step.command)?,
            }
        }
        Ok(())
    }
}

/// Why an install stopped. Paths are as on this machine (below the root).
#[derive(Debug, Error)]
pub enum InstallError {
    #[error(
        "bin dir {}: {reason}; allowed: an absolute UTF-8 path without `..` or control characters, \
         outside /home, /root, /run/user, /tmp and /var/tmp (the unit's ProtectHome= and \
         PrivateTmp= hide those from the service), e.g. {DEFAULT_BIN_DIR}",
        path.display()
    )]
    InvalidBinDir { path: PathBuf, reason: &'static str },
    #[error("root {}: {source}; allowed: an existing directory (`/` for this machine)", path.display())]
    Root { path: PathBuf, source: io::Error },
    #[error("binary {}: cannot read it: {source}", path.display())]
    BinaryUnreadable { path: PathBuf, source: io::Error },
    #[error("binary {}: not a regular file; allowed: the florence-edge executable", path.display())]
    BinaryNotFile { path: PathBuf },
    #[error("{}: exists and is not a directory; allowed: a directory (move the file away)", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: cannot {op}: {source}{}", path.display(), privilege_hint(source))]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Most failures of a real install come from not being root.
fn privilege_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        " (run as root, e.g. `sudo florence-edge install-service`)"
    } else {
        ""
    }
}

/// The committed unit with the binary's path in `ExecStart=` and
/// `ExecStartPre=` (and any other `Exec*=` naming it) changed from
/// [`PACKAGED_BIN_DIR`] to `bin_dir`, quoted for systemd when needed.
/// A non-UTF-8 `bin_dir` is written lossily; [`install`] refuses one first.
pub fn render_unit(bin_dir: &Path) -> String {
    let packaged = format!("{PACKAGED_BIN_DIR}/{BINARY_NAME}");
    let installed = unit_word(&bin_dir.join(BINARY_NAME).to_string_lossy());
    let mut out = String::with_capacity(UNIT_TEMPLATE.len() + 2 * installed.len());
    for line in UNIT_TEMPLATE.split_inclusive('\n') {
        let rewritten = line.split_once('=').and_then(|(key, value)| {
            if !EXEC_KEYS.contains(&key) {
                return None;
            }
            let rest = value.strip_prefix(packaged.as_str())?;
            // `/usr/bin/florence-edge-foo` is another program.
            let ends_word = rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']);
            ends_word.then(|| format!("{key}={installed}{rest}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
    }
    out
}

/// One word of a unit's command line: `%` would start a specifier, `$` an
/// environment variable, and white space would split the path.
fn unit_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@:,".contains(c));
    if plain {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Puts everything in place (see the module documentation) and says what it
/// did. Stops at the first failure, naming the path; what was written before
/// it stays, and running `install` again completes it.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    check_bin_dir(&opts.bin_dir)?;
    check_root(&opts.root)?;
    check_binary(&opts.binary)?;

    let mut paths = Vec::new();
    let binary_path = opts.bin_dir.join(BINARY_NAME);
    let location = under_root(&opts.root, &binary_path);
    let action = install_binary(&opts.binary, &location, opts.dry_run)?;
    paths.push(InstalledPath {
        item: Item::Binary,
        path: binary_path,
        location,
        action,
    });

    let unit = render_unit(&opts.bin_dir);
    paths.push(put_file(
        opts,
        Item::Unit,
        UNIT_PATH,
        unit.as_bytes(),
        Policy::Replace,
    )?);
    if under_root(&opts.root, Path::new(JETSON_MARKER)).exists() {
        paths.push(put_file(
            opts,
            Item::JetsonDropIn,
            JETSON_DROP_IN_PATH,
            JETSON_DROP_IN.as_bytes(),
            Policy::Replace,
        )?);
    }
    paths.push(put_file(
        opts,
        Item::Sysusers,
        SYSUSERS_PATH,
        SYSUSERS.as_bytes(),
        Policy::Replace,
    )?);
    paths.push(put_dir(opts, Item::ConfigDir, CONFIG_DIR, CONFIG_DIR_MODE)?);
    paths.push(put_file(
        opts,
        Item::Config,
        CONFIG_PATH,
        EXAMPLE_CONFIG.as_bytes(),
        Policy::KeepExisting,
    )?);
    for dir in STATE_DIRS {
        paths.push(put_dir(opts, Item::StateDir, dir, STATE_DIR_MODE)?);
    }

    let config_is_example = paths
        .iter()
        .any(|p| p.item == Item::Config && p.action != Action::Kept);
    Ok(InstallReport {
        root: opts.root.clone(),
        dry_run: opts.dry_run,
        paths,
        next_steps: next_steps(opts, config_is_example),
    })
}

fn check_bin_dir(dir: &Path) -> Result<(), InstallError> {
    let invalid = |reason| InstallError::InvalidBinDir {
        path: dir.to_owned(),
        reason,
    };
    let text = dir.to_str().ok_or_else(|| invalid("not valid UTF-8"))?;
    if !dir.is_absolute() {
        return Err(invalid("not an absolute path"));
    }
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(invalid("contains `..`"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    if HIDDEN_FROM_SERVICE.iter().any(|h| dir.starts_with(h)) {
        return Err(invalid("hidden from the service by the unit's sandbox"));
    }
    Ok(())
}

fn check_root(root: &Path) -> Result<(), InstallError> {
    let meta = fs::metadata(root).map_err(|source| InstallError::Root {
        path: root.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(InstallError::Root {
            path: root.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
        })
    }
}

fn check_binary(binary: &Path) -> Result<(), InstallError> {
    let meta = fs::metadata(binary).map_err(|source| InstallError::BinaryUnreadable {
        path: binary.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(InstallError::BinaryNotFile {
            path: binary.to_owned(),
        });
    }
    fs::File::open(binary).map_err(|source| InstallError::BinaryUnreadable {
        path: binary.to_owned(),
        source,
    })?;
    Ok(())
}

fn is_this_machine(root: &Path) -> bool {
    fs::canonicalize(root).is_ok_and(|r| r == Path::new("/"))
}

/// The commands that finish the install. On this machine (and not a dry run)
/// the two that change nothing a user owns are run here when the programs
/// exist; enabling the service is always left to the operator, who must first
/// put the model in place and check the configuration.
fn next_steps(opts: &InstallOptions, config_is_example: bool) -> Vec<NextStep> {
    let start_why = if config_is_example {
        format!(
            "after editing {CONFIG_PATH} (the example names cameras and a broker that are \
             not yours), putting the model under {}/models and \
             `florence-edge validate --config {CONFIG_PATH}`",
            STATE_DIRS[0]
        )
    } else {
        format!(
            "after putting the model under {}/models and \
             `florence-edge validate --config {CONFIG_PATH}`",
            STATE_DIRS[0]
        )
    };
    if !is_this_machine(&opts.root) {
        let root = shell_word(&opts.root.to_string_lossy());
        let why = "installed below another root; run these for that system".to_owned();
        return vec![
            NextStep {
                // With --root, a file argument would be read from this
                // machine; without one it reads the root's sysusers.d.
                command: format!("systemd-sysusers --root={root}"),
                outcome: StepOutcome::ToRun(why.clone()),
            },
            NextStep {
                command: format!("systemctl --root={root} enable {UNIT_NAME}"),
                outcome: StepOutcome::ToRun(why),
            },
        ];
    }
    let run_here = |program: &str, args: &[&str]| -> NextStep {
        let command = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let outcome = if opts.dry_run {
            StepOutcome::ToRun("dry run".to_owned())
        } else {
            match find_program(program) {
                None => StepOutcome::ToRun(format!("{program} not found on this machine")),
                Some(exe) => run(&exe, args),
            }
        };
        NextStep { command, outcome }
    };
    vec![
        run_here("systemd-sysusers", &[SYSUSERS_PATH]),
        run_here("systemctl", &["daemon-reload"]),
        NextStep {
            command: "systemctl enable --now florence-edge".to_owned(),
            outcome: StepOutcome::ToRun(start_why),
        },
    ]
}

fn run(exe: &Path, args: &[&str]) -> StepOutcome {
    match Command::new(exe).args(args).output() {
        Err(e) => StepOutcome::Failed(format!("cannot start {}: {e}", exe.display())),
        Ok(out) if out.status.success() => StepOutcome::Done,
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            StepOutcome::Failed(format!("{}: {}", out.status, first.trim()))
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Quotes a path for the next-step command lines shown to the operator.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@:,=".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_lines(unit: &str) -> Vec<&str> {
        unit.lines()
            .filter(|l| EXEC_KEYS.iter().any(|k| l.starts_with(&format!("{k}="))))
            .collect()
    }

    #[test]
    fn render_for_the_package_path_is_the_committed_unit() {
        assert_eq!(render_unit(Path::new(PACKAGED_BIN_DIR)), UNIT_TEMPLATE);
    }

    #[test]
    fn render_points_start_and_validate_at_the_bin_dir() {
        let unit = render_unit(Path::new("/usr/local/bin"));
        assert_eq!(
            exec_lines(&unit),
            [
                "ExecStartPre=/usr/local/bin/florence-edge validate --config /etc/florence-edge/florence-edge.toml",
                "ExecStart=/usr/local/bin/florence-edge run --config /etc/florence-edge/florence-edge.toml",
                "ExecReload=/bin/kill -HUP $MAINPID",
            ]
        );
        assert_eq!(unit.lines().count(), UNIT_TEMPLATE.lines().count());
    }

    #[test]
    fn render_quotes_paths_systemd_would_split_or_expand() {
        let unit = render_unit(Path::new("/opt/fe 1/%i/$HOME"));
        assert!(unit.contains(
            "ExecStart=\"/opt/fe 1/%%i/$$HOME/florence-edge\" run --config /etc/florence-edge/florence-edge.toml\n"
        ));
    }

    #[test]
    fn unit_word_escapes_quotes_backslashes_and_control_characters() {
        assert_eq!(unit_word("/a\"b\\c\nd"), "\"/a\\\"b\\\\c\\x0ad\"");
        assert_eq!(unit_word("/usr/local/bin/x"), "/usr/local/bin/x");
    }

    #[test]
    fn state_dirs_are_the_units_state_directory_entries() {
        let line = UNIT_TEMPLATE
            .lines()
            .find_map(|l| l.strip_prefix("StateDirectory="));
        let from_unit: Vec<String> = line
            .map(|l| {
                l.split_whitespace()
                    .map(|d| format!("/var/lib/{d}"))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(from_unit, STATE_DIRS);
    }

    #[test]
    fn unit_user_is_the_one_sysusers_creates() {
        assert!(UNIT_TEMPLATE.lines().any(|l| l == "User=florence-edge"));
        assert!(UNIT_TEMPLATE
            .lines()
            .any(|l| l == "SupplementaryGroups=video render"));
        let sysusers: Vec<Vec<&str>> = SYSUSERS
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(sysusers[0][..2], ["u", "florence-edge"]);
        assert_eq!(sysusers[0].last(), Some(&"/var/lib/florence-edge"));
        assert_eq!(sysusers[1], ["m", "florence-edge", "video"]);
        assert_eq!(sysusers[2], ["m", "florence-edge", "render"]);
    }

    #[test]
    fn unit_runs_validate_and_run_on_the_config_path() {
        for sub in ["validate", "run"] {
            let needle = format!(" {sub} --config {CONFIG_PATH}\n");
            assert!(UNIT_TEMPLATE.contains(&needle), "missing {needle:?}");
        }
    }

    #[test]
    fn bin_dirs_the_service_cannot_reach_are_refused() {
        for (dir, reason) in [
            ("usr/local/bin", "not an absolute path"),
            ("/usr/local/../bin", "contains `..`"),
            (
                "/home/ops/bin",
                "hidden from the service by the unit's sandbox",
            ),
            ("/root/bin", "hidden from the service by the unit's sandbox"),
            ("/tmp/x", "hidden from the service by the unit's sandbox"),
            ("/usr/lo\ncal", "contains a control character"),
        ] {
            match check_bin_dir(Path::new(dir)) {
                Err(InstallError::InvalidBinDir { reason: r, .. }) => {
                    assert_eq!(r, reason, "{dir}")
                }
                other => panic!("{dir}: expected InvalidBinDir, got {other:?}"),
            }
        }
        assert!(check_bin_dir(Path::new("/usr/local/bin")).is_ok());
        assert!(check_bin_dir(Path::new("/opt/florence-edge/bin")).is_ok());
    }

    #[test]
    fn non_utf8_bin_dir_is_refused() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = Path::new(OsStr::from_bytes(b"/usr/\xffbin"));
        assert!(matches!(
            check_bin_dir(dir),
            Err(InstallError::InvalidBinDir {
                reason: "not valid UTF-8",
                ..
            })
        ));
    }

    #[test]
    fn permission_denied_tells_to_run_as_root() {
        let e = InstallError::Io {
            op: "create directory",
            path: PathBuf::from("/etc/systemd/system"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/systemd/system: cannot create directory: "),
            "{text}"
        );
        assert!(
            text.ends_with("(run as root, e.g. `sudo florence-edge install-service`)"),
            "{text}"
        );
    }

    #[test]
    fn follow_up_commands_report_success_and_failure() {
        let sh = find_program("sh").expect("sh on PATH");
        assert_eq!(run(&sh, &["-c", "exit 0"]), StepOutcome::Done);
        match run(&sh, &["-c", "echo 'no systemd here' >&2; exit 3"]) {
            StepOutcome::Failed(why) => {
                assert!(why.contains("3"), "{why}");
                assert!(why.ends_with("no systemd here"), "{why}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(find_program("florence-edge-no-such-program"), None);
    }

    #[test]
    fn shell_word_quotes_what_a_shell_would_split() {
        assert_eq!(shell_word("/srv/img"), "/srv/img");
        assert_eq!(shell_word("/srv/my img"), "'/srv/my img'");
        assert_eq!(shell_word("/srv/it's"), r"'/srv/it'\''s'");
    }
}
