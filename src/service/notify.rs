//! The systemd notification protocol (`sd_notify(3)`), without libsystemd.
//!
//! systemd passes `NOTIFY_SOCKET` (a Unix datagram socket; a leading `@`
//! means the abstract namespace) to a `Type=notify` service, and
//! `WATCHDOG_USEC` (plus `WATCHDOG_PID`) when `WatchdogSec=` is set. The
//! service sends newline-separated `KEY=VALUE` assignments:
//! `READY=1` once it serves, `WATCHDOG=1` at least every `WATCHDOG_USEC`,
//! `RELOADING=1` + `MONOTONIC_USEC=` when a reload starts (then `READY=1`),
//! `STOPPING=1` at shutdown and `STATUS=` with a one-line summary that
//! `systemctl status` shows.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, so the daemon
//! runs the same in a terminal, a container or a test.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifySocket {
    Path(PathBuf),
    /// Linux abstract namespace (`@name` in `NOTIFY_SOCKET`).
    Abstract(Vec<u8>),
}

impl NotifySocket {
    /// Parses a `NOTIFY_SOCKET` value. Only Unix socket addresses are
    /// supported (`vsock:` addresses of VMs are not).
    pub fn parse(value: &str) -> Result<NotifySocket, String> {
        if let Some(name) = value.strip_prefix('@') {
            Ok(NotifySocket::Abstract(name.as_bytes().to_vec()))
        } else if value.starts_with('/') {
            Ok(NotifySocket::Path(PathBuf::from(value)))
        } else {
            Err(format!(
                "NOTIFY_SOCKET={value:?} is not supported; allowed: an absolute socket path or @abstract-name"
            ))
        }
    }
}

/// A connection to the service manager, or nothing when there is none.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, NotifySocket)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// From the environment systemd sets. A malformed `NOTIFY_SOCKET` or
    /// `WATCHDOG_USEC` is logged and ignored: the daemon's own work does not
    /// depend on systemd, and systemd will then time the start out, which
    /// names the unit's problem in its own log.
    pub fn from_env() -> Notifier {
        let socket = match std::env::var("NOTIFY_SOCKET") {
            Ok(v) if !v.is_empty() => match NotifySocket::parse(&v) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("{e}; not notifying systemd.");
                    None
                }
            },
            _ => None,
        };
        let watchdog = watchdog_from_env(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        match socket {
            Some(s) => Notifier::new(s, watchdog).unwrap_or_else(|e| {
                tracing::error!(error = %e, "Cannot create the notification socket; not notifying systemd.");
                Notifier::disabled()
            }),
            None => Notifier::disabled(),
        }
    }

    /// Notifies `socket`; `watchdog` is the interval systemd expects pings
    /// within (`WATCHDOG_USEC`), if any.
    pub fn new(socket: NotifySocket, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let sock = UnixDatagram::unbound()?;
        Ok(Notifier {
            target: Some((sock, socket)),
            watchdog,
        })
    }

    /// Whether there is a service manager to notify.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd enforces, if any. Ping at half of it.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification message (`KEY=VALUE` lines).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let Some((sock, target)) = &self.target else {
            return Ok(());
        };
        match target {
            NotifySocket::Path(p) => sock.send_to(message.as_bytes(), p).map(|_| ()),
            NotifySocket::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(message.as_bytes(), &addr).map(|_| ())
            }
        }
    }

    /// Sends and logs a failure instead of returning it: a notification that
    /// does not arrive shows up in systemd's log as a start timeout or a
    /// watchdog kill, and our log says why.
    fn send_logged(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::warn!(error = %e, message, "Notifying systemd failed.");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }

    pub fn status(&self, status: &str) {
        self.send_logged(&format!("STATUS={}", one_line(status)));
    }

    /// A reload started; send [`Notifier::ready`] when it is done.
    pub fn reloading(&self) {
        self.send_logged(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=Reloading the configuration.",
            monotonic_usec()
        ));
    }

    /// Asks systemd for `by` more time to start (or stop) than
    /// `TimeoutStartSec=` allows: long work such as building TensorRT
    /// engines sends this while it progresses.
    pub fn extend_timeout(&self, by: Duration, status: &str) {
        self.send_logged(&format!(
            "EXTEND_TIMEOUT_USEC={}\nSTATUS={}",
            by.as_micros(),
            one_line(status)
        ));
    }

    pub fn stopping(&self, status: &str) {
        self.send_logged(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }
}

/// The watchdog timeout from `WATCHDOG_USEC`, when it is meant for this
/// process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_from_env(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec = usec?.trim().parse::<u64>().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// A STATUS value must be one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_addresses() {
        assert_eq!(
            NotifySocket::parse("/run/systemd/notify").unwrap(),
            NotifySocket::Path("/run/systemd/notify".into())
        );
        assert_eq!(
            NotifySocket::parse("@/org/systemd/notify").unwrap(),
            NotifySocket::Abstract(b"/org/systemd/notify".to_vec())
        );
        let e = NotifySocket::parse("vsock:2:1234").unwrap_err();
        assert!(e.contains("vsock:2:1234") && e.contains("absolute socket path"));
    }

    #[test]
    fn watchdog_only_for_this_process() {
        let d = Some(Duration::from_secs(30));
        assert_eq!(watchdog_from_env(Some("30000000"), None, 7), d);
        assert_eq!(watchdog_from_env(Some("30000000"), Some("7"), 7), d);
        assert_eq!(watchdog_from_env(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from_env(Some("0"), None, 7), None);
        assert_eq!(watchdog_from_env(Some("soon"), None, 7), None);
        assert_eq!(watchdog_from_env(None, None, 7), None);
    }

    fn receiver() -> (tempfile::TempDir, UnixDatagram, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, sock, path)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_the_socket() {
        let (_dir, sock, path) = receiver();
        let n = Notifier::new(NotifySocket::Path(path), None).unwrap();
        n.ready("3 cameras\nstreaming");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=3 cameras streaming");
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        n.reloading();
        let m = recv(&sock);
        assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
        let usec: u64 = m.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
            .parse()
            .unwrap();
        assert!(usec > 0);
        n.stopping("draining");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=draining");
        n.extend_timeout(Duration::from_secs(90), "building engines");
        assert_eq!(
            recv(&sock),
            "EXTEND_TIMEOUT_USEC=90000000\nSTATUS=building engines"
        );
    }

    #[test]
    fn abstract_socket() {
        let name = format!("florence-edge-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(NotifySocket::parse(&format!("@{name}")).unwrap(), None).unwrap();
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn disabled_sends_nothing() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready("x");
        assert!(n.send("READY=1").is_ok());
    }
}
