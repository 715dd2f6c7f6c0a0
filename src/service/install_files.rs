//! The file operations of `install-service` ([`super::install`]): paths below the install root,
//! the binary's copy, files replaced by renaming a complete temporary file over them, and
//! directories created with their mode. Each says which [`Action`] it took, or would take in a
//! dry run; `install.rs` decides what goes where.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::install::{Action, InstallError, InstallOptions, InstalledPath, Item};

const FILE_MODE: u32 = 0o644;
const BINARY_MODE: u32 = 0o755;

/// `path` (absolute, as the installed system sees it) below `root`.
pub(super) fn under_root(root: &Path, path: &Path) -> PathBuf {
    let relative: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(relative)
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { op, path, source }
}

pub(super) fn install_binary(
    source: &Path,
    target: &Path,
    dry_run: bool,
) -> Result<Action, InstallError> {
    // Installing the binary that is already there (run from the bin dir).
    if let (Ok(a), Ok(b)) = (fs::canonicalize(source), fs::canonicalize(target)) {
        if a == b {
            return Ok(Action::Unchanged);
        }
    }
    if dry_run {
        return Ok(Action::WouldWrite);
    }
    replace_atomically(target, BINARY_MODE, |tmp| {
        fs::copy(source, tmp).map(|_| ()).map_err(|e| {
            // Name whichever side failed: a read error is the source's.
            match fs::File::open(source) {
                Err(source_error) => InstallError::BinaryUnreadable {
                    path: source.to_owned(),
                    source: source_error,
                },
                Ok(_) => io_error("write", target)(e),
            }
        })
    })?;
    Ok(Action::Written)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Policy {
    /// Ours: bring it to the current content.
    Replace,
    /// The user's once it exists.
    KeepExisting,
}

pub(super) fn put_file(
    opts: &InstallOptions,
    item: Item,
    path: &str,
    contents: &[u8],
    policy: Policy,
) -> Result<InstalledPath, InstallError> {
    let location = under_root(&opts.root, Path::new(path));
    let action = match fs::symlink_metadata(&location) {
        Ok(_) if policy == Policy::KeepExisting => Action::Kept,
        Ok(meta) if meta.is_dir() => {
            return Err(io_error("write a file over a directory", &location)(
                io::Error::new(io::ErrorKind::AlreadyExists, "it is a directory"),
            ))
        }
        Ok(_) if fs::read(&location).is_ok_and(|old| old == contents) => Action::Unchanged,
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_error("inspect", &location)(e))
        }
        Ok(_) | Err(_) if opts.dry_run => Action::WouldWrite,
        Ok(_) | Err(_) => write_file(&location, contents)?,
    };
    Ok(InstalledPath {
        item,
        path: PathBuf::from(path),
        location,
        action,
    })
}

fn write_file(location: &Path, contents: &[u8]) -> Result<Action, InstallError> {
    replace_atomically(location, FILE_MODE, |tmp| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(tmp)
            .map_err(io_error("create", tmp))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(io_error("write", tmp))
    })?;
    Ok(Action::Written)
}

/// Fills a temporary file next to `target` with `fill`, gives it `mode` and
/// renames it over `target`; removes the temporary file on failure.
fn replace_atomically(
    target: &Path,
    mode: u32,
    fill: impl FnOnce(&Path) -> Result<(), InstallError>,
) -> Result<(), InstallError> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.install-{}", std::process::id()));
    // Left over by an interrupted run with the same process id.
    let _ = fs::remove_file(&tmp);
    let result = fill(&tmp)
        .and_then(|()| {
            fs::set_permissions(&tmp, Permissions::from_mode(mode))
                .map_err(io_error("set the mode of", &tmp))
        })
        .and_then(|()| fs::rename(&tmp, target).map_err(io_error("replace", target)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(super) fn put_dir(
    opts: &InstallOptions,
    item: Item,
    path: &str,
    mode: u32,
) -> Result<InstalledPath, InstallError> {
    let location = under_root(&opts.root, Path::new(path));
    let action = match fs::metadata(&location) {
        Ok(meta) if meta.is_dir() => Action::Exists,
        Ok(_) => return Err(InstallError::NotADirectory { path: location }),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_error("inspect", &location)(e))
        }
        Err(_) if opts.dry_run => Action::WouldCreate,
        Err(_) => {
            fs::create_dir_all(&location).map_err(io_error("create directory", &location))?;
            fs::set_permissions(&location, Permissions::from_mode(mode))
                .map_err(io_error("set the mode of", &location))?;
            Action::Created
        }
    };
    Ok(InstalledPath {
        item,
        path: PathBuf::from(path),
        location,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_root_keeps_paths_inside_the_root() {
        assert_eq!(
            under_root(Path::new("/tmp/r"), Path::new("/etc/x.conf")),
            Path::new("/tmp/r/etc/x.conf")
        );
        assert_eq!(
            under_root(Path::new("/"), Path::new("/etc/x")),
            Path::new("/etc/x")
        );
    }
}
