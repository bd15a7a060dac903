//! Files on either side: what the sender sends (a file, a directory packed
//! as one tar stream, standard input) with code mode's header naming it,
//! and where the receiver puts it: under `PATH.part` until complete, never
//! over an existing path without `--overwrite`, and a directory's entries
//! checked so that nothing lands outside it.
//!
//! Code mode's header, before the size of `dtcp_client::transfer`:
//!
//! ```text
//! kind (1 byte: 1 file, 2 directory as a tar stream, 3 standard input)
//! name length (2 bytes, big-endian, at most 255), name (UTF-8, one path component)
//! ```
//!
//! The receiver answers `0x06` when it can take it, or `0x15`, a length
//! byte and why not (e.g. the file exists), and closes: the sender does not
//! send a byte it would refuse.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::exit::{Local, local_error};

/// The longest name in a header.
const MAX_NAME: usize = 255;

/// What the sender sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File = 1,
    Dir = 2,
    Stdin = 3,
}

/// Code mode's header: what comes, and its name.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) name: String,
}

impl Header {
    pub(crate) async fn write(&self, s: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        let name = self.name.as_bytes();
        let len = u16::try_from(name.len().min(MAX_NAME)).expect("at most 255");
        s.write_all(&[self.kind as u8]).await?;
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(&name[..usize::from(len)]).await
    }

    pub(crate) async fn read(s: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Header> {
        let kind = match s.read_u8().await? {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Stdin,
            k => bail!("the sender announced an unknown kind of transfer ({k})"),
        };
        let len = usize::from(s.read_u16().await?);
        if len > MAX_NAME {
            bail!("the sender announced a name of {len} bytes");
        }
        let mut name = vec![0u8; len];
        s.read_exact(&mut name).await?;
        let name = String::from_utf8(name).context("the sender's name is not UTF-8")?;
        Ok(Header { kind, name })
    }
}

/// The receiver takes what the header announced.
const READY: u8 = 0x06;
/// It does not; a reason follows.
const REFUSED: u8 = 0x15;

/// The sender refused by the receiver.
#[derive(Debug, thiserror::Error)]
#[error("the receiver refused: {0}")]
pub(crate) struct ReceiverRefused(String);

/// The receiver's answer to the header: ready, or why not.
pub(crate) async fn answer(
    s: &mut (impl AsyncWrite + Unpin),
    refusal: Option<&str>,
) -> std::io::Result<()> {
    match refusal {
        None => s.write_all(&[READY]).await?,
        Some(why) => {
            let why = &why.as_bytes()[..why.len().min(255)];
            let len = u8::try_from(why.len()).expect("at most 255");
            s.write_all(&[REFUSED, len]).await?;
            s.write_all(why).await?;
            s.shutdown().await?;
        }
    }
    s.flush().await
}

/// The sender reads the receiver's answer.
pub(crate) async fn read_answer(s: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<()> {
    match s.read_u8().await? {
        READY => Ok(()),
        REFUSED => {
            let mut why = vec![0u8; usize::from(s.read_u8().await?)];
            s.read_exact(&mut why).await?;
            Err(ReceiverRefused(String::from_utf8_lossy(&why).into_owned()).into())
        }
        b => bail!("the receiver answered the header with {b:#04x}"),
    }
}

/// What `dtcp send` reads from.
pub(crate) struct Source {
    pub(crate) reader: Box<dyn AsyncRead + Unpin + Send>,
    pub(crate) size: Option<u64>,
    pub(crate) header: Header,
}

/// Opens what `path` names; a directory is packed into an unlinked
/// temporary tar file first, so that its size is known.
pub(crate) async fn open(path: &Path, dirs: bool) -> anyhow::Result<Source> {
    if path == Path::new("-") {
        let header = Header {
            kind: Kind::Stdin,
            name: String::new(),
        };
        return Ok(Source {
            reader: Box::new(tokio::io::stdin()),
            size: None,
            header,
        });
    }
    let meta = tokio::fs::metadata(path)
        .await
        .local(|| format!("opening {}", path.display()))?;
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let (file, kind) = if meta.is_dir() {
        if !dirs {
            return Err(local_error(format!(
                "{} is a directory: directories are sent with a code (no key, or --code)",
                path.display()
            )));
        }
        (pack(path.to_owned()).await?, Kind::Dir)
    } else {
        let f = tokio::fs::File::open(path)
            .await
            .local(|| format!("opening {}", path.display()))?;
        (f, Kind::File)
    };
    let size = file
        .metadata()
        .await
        .local(|| "reading the size".into())?
        .len();
    Ok(Source {
        reader: Box::new(file),
        size: Some(size),
        header: Header { kind, name },
    })
}

/// Packs `dir`'s contents (symlinks as symlinks) into a tar file that is
/// already unlinked, so nothing is left behind whatever happens next.
async fn pack(dir: PathBuf) -> anyhow::Result<tokio::fs::File> {
    let tmp = std::env::temp_dir().join(format!("dtcp-{}.tar", uuid::Uuid::new_v4()));
    let what = format!("packing {}", dir.display());
    let file = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        std::fs::remove_file(&tmp)?;
        let mut b = tar::Builder::new(file);
        b.follow_symlinks(false);
        b.append_dir_all(".", &dir)?;
        let mut file = b.into_inner()?;
        std::io::Seek::rewind(&mut file)?;
        Ok(file)
    })
    .await?
    .local(|| what)?;
    Ok(tokio::fs::File::from_std(file))
}

/// Where the receiver puts what comes.
#[derive(Debug)]
pub(crate) enum Place {
    Stdout,
    File { path: PathBuf, part: PathBuf },
    Dir { path: PathBuf, part: PathBuf },
}

/// `path` with `suffix` appended to its last component.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Decides where to write: `-o` (`-`: standard output; an existing
/// directory: the sender's name in it), else in code mode the sender's name
/// in the current directory, else standard output.
pub(crate) fn place(
    output: Option<&Path>,
    header: Option<&Header>,
    overwrite: bool,
) -> anyhow::Result<Place> {
    let kind = header.map_or(Kind::Stdin, |h| h.kind);
    let path = match (output, header) {
        (Some(p), _) if p == Path::new("-") => None,
        // An existing directory takes the sender's name inside it.
        (Some(p), Some(h)) if p.is_dir() && h.kind != Kind::Stdin => {
            Some(p.join(safe_name(&h.name)?))
        }
        (Some(p), _) => Some(p.to_owned()),
        (None, Some(h)) if h.kind != Kind::Stdin => Some(PathBuf::from(safe_name(&h.name)?)),
        (None, _) => None,
    };
    let Some(path) = path else {
        if kind == Kind::Dir {
            return Err(local_error(
                "a directory cannot go to standard output: give -o DIR".into(),
            ));
        }
        return Ok(Place::Stdout);
    };
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if kind == Kind::Dir || meta.is_dir() {
            return Err(local_error(format!(
                "{} exists: choose another path with -o (a directory is never replaced)",
                path.display()
            )));
        }
        if !overwrite {
            return Err(local_error(format!(
                "{} exists: give --overwrite to replace it, or -o another path",
                path.display()
            )));
        }
    }
    let part = with_suffix(&path, ".part");
    if kind == Kind::Dir {
        Ok(Place::Dir { path, part })
    } else {
        Ok(Place::File { path, part })
    }
}

/// The sender's name, if it is one plain path component.
fn safe_name(name: &str) -> anyhow::Result<&str> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Ok(name),
        _ => Err(local_error(format!(
            "the sender's name {name:?} is not a plain file name: give -o PATH"
        ))),
    }
}

/// Creates the file the bytes go to: `PATH.part` (for a directory, its tar
/// stream), new unless --overwrite.
pub(crate) async fn create_part(part: &Path, overwrite: bool) -> anyhow::Result<tokio::fs::File> {
    let mut o = tokio::fs::OpenOptions::new();
    o.write(true);
    if overwrite {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    o.open(part).await.local(|| {
        format!(
            "creating {} (left by an earlier transfer? --overwrite replaces it)",
            part.display()
        )
    })
}

/// Moves a complete file into place; without --overwrite, never over a
/// path that appeared meanwhile (a hard link fails if the name exists).
pub(crate) async fn finish_file(part: &Path, path: &Path, overwrite: bool) -> anyhow::Result<()> {
    let what = || format!("moving {} to {}", part.display(), path.display());
    if overwrite {
        return tokio::fs::rename(part, path).await.local(what);
    }
    match tokio::fs::hard_link(part, path).await {
        Ok(()) => tokio::fs::remove_file(part).await.local(what),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e).local(what),
        // A file system without hard links: check, then rename.
        Err(_) if tokio::fs::symlink_metadata(path).await.is_ok() => {
            Err(local_error(format!("{} exists", path.display())))
        }
        Err(_) => tokio::fs::rename(part, path).await.local(what),
    }
}

/// Unpacks a received tar stream (the file `tar`) into a new directory
/// `PATH.part`, refusing any entry that could land outside it, then moves it
/// into place. On a refusal nothing is left.
pub(crate) async fn finish_dir(tar: &Path, part: &Path, path: &Path) -> anyhow::Result<()> {
    let (t, p) = (tar.to_owned(), part.to_owned());
    let unpacked = tokio::task::spawn_blocking(move || super::unpack::unpack(&t, &p)).await?;
    tokio::fs::remove_file(tar).await.ok();
    if let Err(e) = unpacked {
        tokio::fs::remove_dir_all(part).await.ok();
        return Err(e);
    }
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        tokio::fs::remove_dir_all(part).await.ok();
        return Err(local_error(format!("{} exists", path.display())));
    }
    tokio::fs::rename(part, path)
        .await
        .local(|| format!("moving {} to {}", part.display(), path.display()))
}
