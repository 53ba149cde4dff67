//! Pull mode's durable watermark: per resource type, the latest `meta.lastUpdated` already
//! published and the resources published at exactly that instant. Written atomically (a
//! temporary file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
//! watermark, never a torn one.
//!
//! Searching `_lastUpdated=ge<instant>` and skipping the ids already seen at that instant
//! means a restart neither skips a resource updated in the same instant nor re-publishes
//! everything.
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Where one resource type's search has got to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The latest `meta.lastUpdated` published, as the server wrote it.
    pub last_updated: String,
    /// `Type/id` of the resources published with exactly that `last_updated`.
    pub ids_at: BTreeSet<String>,
}

/// The whole watermark file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub types: BTreeMap<String, Mark>,
}

/// Errors reading or writing the watermark file.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error("watermark file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "watermark file {path} is not a Ponte watermark ({reason}); fix or remove it deliberately (removing it re-reads the server from `pull.since`)"
    )]
    Corrupt { path: String, reason: String },
}

/// The watermark file and its current content.
#[derive(Debug)]
pub struct WatermarkFile {
    path: PathBuf,
    pub current: Watermark,
}

impl WatermarkFile {
    /// Opens the file, or starts empty when it does not exist. A corrupt file is an error: the
    /// adapter refuses to start rather than silently re-reading everything.
    pub fn open(path: &Path) -> Result<WatermarkFile, WatermarkError> {
        let p = path.display().to_string();
        let current = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WatermarkError::Corrupt {
                path: p,
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Watermark::default(),
            Err(source) => return Err(WatermarkError::Io { path: p, source }),
        };
        Ok(WatermarkFile {
            path: path.to_path_buf(),
            current,
        })
    }

    /// Replaces one type's mark and makes it durable before returning.
    pub fn store(&mut self, rtype: &str, mark: Mark) -> Result<(), WatermarkError> {
        let mut next = self.current.clone();
        next.types.insert(rtype.to_owned(), mark);
        self.write(&next)?;
        self.current = next;
        Ok(())
    }

    fn write(&self, w: &Watermark) -> Result<(), WatermarkError> {
        let io = |source| WatermarkError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "watermark".to_owned());
        let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(w).map_err(|e| io(std::io::Error::other(e)))?;
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename itself is durable only once the directory is.
            std::fs::File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_mark_survives_reopening_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wm.json");
        let mut f = WatermarkFile::open(&path).unwrap();
        assert_eq!(f.current, Watermark::default());
        let mark = Mark {
            last_updated: "2025-01-01T00:00:00Z".into(),
            ids_at: ["Observation/1".to_owned()].into(),
        };
        f.store("Observation", mark.clone()).unwrap();
        let again = WatermarkFile::open(&path).unwrap();
        assert_eq!(again.current.types["Observation"], mark);
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );

        std::fs::write(&path, b"{torn").unwrap();
        let err = WatermarkFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a Ponte watermark"), "{err}");
    }
}
