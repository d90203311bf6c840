//! OS helpers: the user PostgreSQL runs as, file ownership, and process inspection via /proc.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ClusterError;

/// Name of the unprivileged OS user server processes run as when we are root.
pub const SERVER_OS_USER: &str = "postgres";

/// The identity server-side commands switch to.
#[derive(Clone, Debug)]
pub(crate) struct RunAs {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub home: PathBuf,
}

impl RunAs {
    /// Makes `cmd` run as this user (group first, then user) with a matching environment.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.gid(self.gid)
            .uid(self.uid)
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
    }

    /// Gives `path` to this user.
    pub fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            ClusterError::InvalidOptions(format!("path {} contains a NUL byte", path.display()))
        })?;
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
        let rc = unsafe { libc::chown(c_path.as_ptr(), self.uid, self.gid) };
        if rc != 0 {
            return Err(ClusterError::io(
                format!("chown {} to {}", path.display(), self.name),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// `Some(user)` when running as root (PostgreSQL refuses to run as root), `None` otherwise.
pub(crate) fn server_identity() -> Result<Option<RunAs>, ClusterError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user(SERVER_OS_USER)?
        .map(Some)
        .ok_or_else(|| ClusterError::UserNotFound(SERVER_OS_USER.to_string()))
}

fn lookup_user(name: &str) -> Result<Option<RunAs>, ClusterError> {
    let c_name = CString::new(name)
        .map_err(|_| ClusterError::InvalidOptions(format!("user name {name:?} contains NUL")))?;
    let mut buf_len = 16 * 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; buf_len];
        // SAFETY: an all-zero passwd is a valid value for a plain C struct.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the duration of the call and `buf_len`
        // matches the buffer's size.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf_len < 1024 * 1024 {
            buf_len *= 4;
            continue;
        }
        if rc != 0 {
            return Err(ClusterError::io(
                format!("looking up OS user {name}"),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        if result.is_null() {
            return Ok(None);
        }
        let home = if pwd.pw_dir.is_null() {
            PathBuf::from("/")
        } else {
            // SAFETY: getpwnam_r succeeded, so pw_dir points into `buf` and is NUL-terminated.
            let dir = unsafe { CStr::from_ptr(pwd.pw_dir) };
            PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()))
        };
        return Ok(Some(RunAs {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        }));
    }
}

/// Sets the permission bits of `path`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ClusterError::io(format!("chmod {:o} {}", mode, path.display()), e))
}

/// Reads `(state, ppid)` from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` names a live (non-zombie) process.
pub(crate) fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // A killed process whose parent never reaps it lingers as a zombie; it is gone for us.
    !matches!(proc_stat(pid), Some(('Z' | 'X', _)))
}

/// Live processes whose parent is `pid`.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(
            |&child| matches!(proc_stat(child), Some((state, ppid)) if ppid == pid && state != 'Z'),
        )
        .collect()
}

/// Sends SIGKILL to `pid`, ignoring a process that is already gone.
pub(crate) fn sigkill(pid: i32) -> Result<(), ClusterError> {
    if pid <= 0 {
        return Ok(());
    }
    // SAFETY: plain kill(2) on a positive pid.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(ClusterError::io(format!("kill -9 {pid}"), err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_stat_parses() {
        let me = std::process::id() as i32;
        assert!(process_alive(me));
        assert!(proc_stat(me).is_some());
        assert!(!process_alive(0));
    }
}
