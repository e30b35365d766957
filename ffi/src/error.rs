//! Error mapping: Rust errors to `-errno` / `RL_E*`, and the static strings of `rl_strerror`.

use std::ffi::{c_int, CStr, CString};
use std::io;
use std::sync::OnceLock;

use crate::{RL_EHANDLE, RL_EPANIC, RL_ESTATE, RL_EUNSUPPORTED};

/// What `rl_strerror` returns for a code it does not know.
pub(crate) const UNKNOWN_ERROR: &CStr = c"unknown error";

/// Largest errno value the description table covers (Linux's highest is 133, EHWPOISON).
const MAX_ERRNO: c_int = 4095;

/// Maps an `io::Error` from the reactor to the C convention.
///
/// The loop's state errors (re-entering `run`, using a closed loop, using a loop inherited across
/// `fork`) are `RL_ESTATE`. OS errors keep their errno. Errors the reactor builds itself carry a
/// kind instead; each kind maps to the errno that names the same condition, so C callers only ever
/// see `-errno` or one of the library's codes.
pub(crate) fn from_io(err: &io::Error) -> c_int {
    if ringloop::callback::StateError::is(err) || ringloop::ForkedChildError::is(err) {
        return RL_ESTATE;
    }
    if let Some(errno) = err.raw_os_error() {
        if errno > 0 && errno <= MAX_ERRNO {
            return -errno;
        }
    }
    use io::ErrorKind as K;
    match err.kind() {
        K::Unsupported => RL_EUNSUPPORTED,
        K::NotFound => -libc::ENOENT,
        K::InvalidInput => -libc::EINVAL,
        K::PermissionDenied => -libc::EPERM,
        K::AlreadyExists => -libc::EEXIST,
        K::WouldBlock => -libc::EAGAIN,
        K::OutOfMemory => -libc::ENOMEM,
        K::TimedOut => -libc::ETIMEDOUT,
        K::Interrupted => -libc::EINTR,
        K::BrokenPipe => -libc::EPIPE,
        K::ConnectionRefused => -libc::ECONNREFUSED,
        K::ConnectionReset => -libc::ECONNRESET,
        K::AddrInUse => -libc::EADDRINUSE,
        K::NotConnected => -libc::ENOTCONN,
        _ => -libc::EIO,
    }
}

/// Converts a `Result` whose success is already a non-negative C value.
pub(crate) fn code<T: Into<i64>>(res: io::Result<T>) -> c_int {
    match res {
        Ok(v) => c_int::try_from(v.into()).unwrap_or(c_int::MAX),
        Err(e) => from_io(&e),
    }
}

/// The description of `code` as a static C string.
pub(crate) fn strerror(code: c_int) -> &'static CStr {
    match code {
        0 => c"success",
        RL_EHANDLE => c"RL_EHANDLE: null, stale or foreign handle",
        RL_EPANIC => c"RL_EPANIC: internal panic caught; the operation did not take place",
        RL_EUNSUPPORTED => c"RL_EUNSUPPORTED: the requested backend is unavailable",
        RL_ESTATE => c"RL_ESTATE: the object is in the wrong state for this call (e.g. re-entered, closed, or a loop inherited across fork)",
        _ => {
            // `c_int::MIN` has no positive counterpart: `checked_abs` keeps it unknown.
            let errno = match code.checked_abs() {
                Some(e) if (1..=MAX_ERRNO).contains(&e) => e,
                _ => return UNKNOWN_ERROR,
            };
            errno_table()
                .get(errno as usize)
                .and_then(|entry| entry.as_deref())
                .unwrap_or(UNKNOWN_ERROR)
        }
    }
}

/// `"ENAME: description"` for every errno the C library knows, built once. libc's `strerror` is
/// not thread-safe and `strerror_r` needs a caller buffer, so the table is built from nix's
/// static names and descriptions and lives for the whole process.
fn errno_table() -> &'static [Option<CString>] {
    static TABLE: OnceLock<Box<[Option<CString>]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=MAX_ERRNO)
            .map(|e| {
                let errno = nix::errno::Errno::from_raw(e);
                if errno == nix::errno::Errno::UnknownErrno {
                    return None;
                }
                CString::new(format!("{errno:?}: {}", errno.desc())).ok()
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_name() {
        assert_eq!(
            strerror(-libc::EAGAIN).to_str().unwrap().split(':').next(),
            Some("EAGAIN")
        );
        assert_eq!(
            strerror(libc::ENOENT).to_str().unwrap().split(':').next(),
            Some("ENOENT")
        );
        assert!(strerror(RL_EHANDLE)
            .to_str()
            .unwrap()
            .starts_with("RL_EHANDLE"));
        assert_eq!(strerror(c_int::MIN), UNKNOWN_ERROR);
        assert_eq!(strerror(-99999), UNKNOWN_ERROR);
    }

    #[test]
    fn io_errors_map_to_negative_errno() {
        assert_eq!(
            from_io(&io::Error::from_raw_os_error(libc::EBADF)),
            -libc::EBADF
        );
        assert_eq!(
            from_io(&io::Error::from(io::ErrorKind::Unsupported)),
            RL_EUNSUPPORTED
        );
        assert_eq!(
            from_io(&io::Error::from(io::ErrorKind::NotFound)),
            -libc::ENOENT
        );
    }
}
