//! CPU time of the calling thread, for the benchmarks' "thread CPU" column
//! (which a busy machine does not inflate the way it inflates wall time).

use std::time::Duration;

/// CPU time of the calling thread (Linux `CLOCK_THREAD_CPUTIME_ID`); `None` elsewhere.
#[cfg(target_os = "linux")]
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_time() -> Option<Duration> {
    None
}
