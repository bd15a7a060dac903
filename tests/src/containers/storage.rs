//! Where the engine keeps its image layers: overlay2 needs an upper
//! directory on a file system other than overlayfs.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::workspace;

/// The magic number `statfs(2)` gives for overlayfs.
const OVERLAYFS_MAGIC: u64 = 0x794c_7630;

/// Whether `path` lies on overlayfs, which the kernel refuses as the upper
/// directory of another overlay mount: overlay2 cannot keep its layers
/// there (as in a CI job's container, whose /tmp is its own root's
/// overlayfs).
fn on_overlayfs(path: &Path) -> bool {
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a plain C struct of integers, for which all zeroes is valid.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) fills the struct it is given, from a NUL-terminated
    // path that outlives the call.
    let found = unsafe { libc::statfs(name.as_ptr(), &mut stat) } == 0;
    // f_type is signed on some targets; the magic is compared as its bits.
    found && stat.f_type as u64 == OVERLAYFS_MAGIC
}

/// The engine's data root and storage driver: overlay2 below the engine's
/// directory (in the temporary directory) unless that is overlayfs, then
/// below the workspace's `target/` (left out of the image's build context)
/// unless that is too, and otherwise vfs (every layer copied whole: slower
/// and bigger, but it works on any file system), saying why.
pub(super) fn storage(dir: &Path, id: u32) -> (PathBuf, &'static str) {
    let candidates = [
        dir.join("data"),
        workspace()
            .join("target")
            .join(format!("dtcp-containers-{id}")),
    ];
    for data in &candidates {
        fs::create_dir_all(data).expect("data root");
        if !on_overlayfs(data) {
            return (data.clone(), "overlay2");
        }
        let _ = fs::remove_dir(data);
    }
    eprintln!(
        "containers: {} and {} are on overlayfs, which cannot hold overlay2's layers \
         (the kernel refuses overlayfs as an overlay's upper directory); the engine \
         uses the vfs driver instead (slower; set TMPDIR to a directory on another \
         file system to avoid it)",
        candidates[0].display(),
        candidates[1].display()
    );
    fs::create_dir_all(&candidates[0]).expect("data root");
    (candidates[0].clone(), "vfs")
}
