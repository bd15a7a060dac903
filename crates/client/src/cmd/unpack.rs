//! Unpacking a received directory: a tar stream from a sender that may be
//! hostile. Only plain files, directories and symlinks that stay inside are
//! taken; an entry with `..`, an absolute path, a link out of the target, a
//! hard link or a device refuses the whole directory.

use std::path::{Component, Path};

use anyhow::{Context, bail};
use tar::EntryType;

use super::exit::Local;

/// Unpacks the tar file `tar` into the new directory `dir`.
pub(crate) fn unpack(tar: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(dir).local(|| format!("creating {}", dir.display()))?;
    let file = std::fs::File::open(tar).local(|| format!("opening {}", tar.display()))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    entries(&mut archive, dir).local(|| "refused the directory the sender sent".into())
}

fn entries(archive: &mut tar::Archive<std::fs::File>, dir: &Path) -> anyhow::Result<()> {
    for entry in archive.entries().context("reading the tar stream")? {
        let mut entry = entry.context("reading the tar stream")?;
        let path = entry.path().context("an entry's path")?.into_owned();
        inside(&path).with_context(|| format!("entry {}", path.display()))?;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Directory => {}
            EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("symlink {} has no target", path.display()))?;
                let from = path.parent().unwrap_or(Path::new(""));
                inside(&from.join(&target)).with_context(|| {
                    format!("symlink {} -> {}", path.display(), target.display())
                })?;
            }
            other => bail!("entry {}: {other:?} entries are not taken", path.display()),
        }
        if !entry
            .unpack_in(dir)
            .with_context(|| format!("writing {}", path.display()))?
        {
            bail!("entry {}: outside the directory", path.display());
        }
    }
    Ok(())
}

/// Whether a relative path stays inside where it starts (`..` only back
/// out of what it went into).
fn inside(path: &Path) -> anyhow::Result<()> {
    let mut depth = 0usize;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .context("leads out of the directory (..)")?;
            }
            Component::RootDir | Component::Prefix(_) => bail!("is an absolute path"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_are_refused() {
        assert!(inside(Path::new("a/b/../c")).is_ok());
        assert!(inside(Path::new("./a")).is_ok());
        assert!(inside(Path::new("a/../../etc")).is_err());
        assert!(inside(Path::new("/etc/passwd")).is_err());
        assert!(inside(Path::new("..")).is_err());
    }
}
