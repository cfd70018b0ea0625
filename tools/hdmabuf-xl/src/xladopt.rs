// SPDX-License-Identifier: MIT
//! Domains started by plain `xl create` or by `xendomains`, which the
//! daemon gives the devices of their configuration file.
//!
//! xl 4.17 keeps no copy of the file it was given: it parses it into
//! libxl's domain configuration, which libxl stores as JSON in the
//! domain's userdata (`/var/lib/xen/userdata-d.<domid>.<uuid>.libxl-json`),
//! and a key xl does not know, `hyper_dmabuf`, is not in it. What xl
//! does keep is the domain's name. So the daemon looks where xl and
//! xendomains take configurations from, `/etc/xen/auto` (what xendomains
//! starts at boot) and `/etc/xen` (where `xl create NAME` finds NAME), and
//! a domain that has no record yet is *adopted* when exactly one file
//! there names it and has `hyper_dmabuf` entries: the daemon records it as
//! `hdmabuf xl create` would, then gives it its devices.
//!
//! Reading the files is the only I/O here ([`scan`]); what to adopt is
//! decided with the rest of the plan (`xldaemon::plan`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::json;

use crate::toolstack::Line;
use crate::xlcfg::{self, Entry, KEY, MAX_FILE_SIZE};

/// Where xendomains and `xl create NAME` take configurations from.
pub(crate) const DEFAULT_DIRS: [&str; 2] = ["/etc/xen/auto", "/etc/xen"];

/// A configuration file naming a domain and giving it devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The file, as found (the first of its names, for a file linked into
    /// both directories, or its first copy).
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) devices: BTreeMap<u32, Entry>,
}

/// Files already reported as unreadable, by path and modification time,
/// so that each is reported once per change rather than at every tick.
#[derive(Debug, Default)]
pub(crate) struct Reported(BTreeSet<(PathBuf, Option<SystemTime>)>);

/// Whether run-parts would skip a file of this name: hidden files, editor
/// and package manager leftovers (`guest.cfg~`, `guest.cfg.dpkg-old`).
fn is_leftover(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.starts_with('.')
        || name.ends_with('~')
        || [
            ".dpkg-old",
            ".dpkg-new",
            ".dpkg-dist",
            ".dpkg-tmp",
            ".ucf-old",
            ".ucf-dist",
            ".bak",
            ".orig",
            ".rej",
            ".swp",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The candidates of `dirs` (each read whole, not recursively; a missing
/// directory has none), and a warning for each file with `hyper_dmabuf`
/// in it that cannot be used, once per version of the file.
pub(crate) fn scan(dirs: &[PathBuf], reported: &mut Reported) -> (Vec<Candidate>, Vec<Line>) {
    let mut candidates = Vec::new();
    let mut warnings = Vec::new();
    // Files seen, by device and inode: a link into /etc/xen/auto (what
    // xendomains' documentation has users make) or a hard link is read once.
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut still_bad = BTreeSet::new();
    let mut bad =
        |path: &Path, modified: Option<SystemTime>, why: String, warnings: &mut Vec<Line>| {
            let key = (path.to_path_buf(), modified);
            if !reported.0.contains(&key) {
                warnings.push(Line {
                    text: format!("warning: not adopting from {}: {why}", path.display()),
                    json: json!({ "warning": why, "config": path.display().to_string() }),
                });
            }
            still_bad.insert(key);
        };
    for dir in dirs {
        let Ok(listing) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = listing.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        for path in files.into_iter().filter(|p| !is_leftover(p)) {
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                // A link that cannot be followed (dangling, or into a
                // directory the daemon may not read): said, not skipped
                // in silence.
                Err(e) if path.is_symlink() => {
                    bad(
                        &path,
                        None,
                        format!("cannot follow the link: {e}"),
                        &mut warnings,
                    );
                    continue;
                }
                Err(_) => continue,
            };
            if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            if meta.len() > MAX_FILE_SIZE as u64 {
                continue;
            }
            match candidate(&path) {
                Ok(Some(c)) => candidates.push(c),
                Ok(None) => {}
                Err(why) => bad(&path, meta.modified().ok(), why, &mut warnings),
            }
        }
    }
    reported.0 = still_bad;
    (candidates, warnings)
}

/// `path` as a candidate: `None` if it has no `hyper_dmabuf` entry (most
/// files there are other domains' configurations, xl.conf, scripts). The
/// file is read once, bounded, and those bytes are parsed.
fn candidate(path: &Path) -> Result<Option<Candidate>, String> {
    let text = xlcfg::read_bounded(path)?;
    if !text.windows(KEY.len()).any(|w| w == KEY.as_bytes()) {
        return Ok(None);
    }
    let cfg = xlcfg::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    if cfg.devices.is_empty() {
        return Ok(None);
    }
    let name = cfg
        .name
        .ok_or("it has hyper_dmabuf entries but no `name`, which the domain is found by")?;
    let devices = cfg
        .devices
        .into_iter()
        .map(|d| (d.entry.devid, d.entry))
        .collect();
    Ok(Some(Candidate {
        path: path.to_path_buf(),
        name,
        devices,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn only_named_files_with_entries_are_candidates() {
        let etc = dir_with(&[
            ("web.cfg", "name = \"web\"\nmemory = 512\n"),
            (
                "gpu.cfg",
                "name = \"gpu\"\nhyper_dmabuf = [ \"backend=0\", \"backend=dd, devid=3\" ]\n",
            ),
            ("xl.conf", "autoballoon = \"off\"\n"),
            ("empty.cfg", "name = \"e\"\nhyper_dmabuf = [ ]\n"),
        ]);
        std::fs::create_dir(etc.path().join("scripts")).unwrap();
        let (found, warnings) = scan(&[etc.path().into()], &mut Reported::default());
        assert_eq!(warnings, []);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].name, "gpu");
        assert_eq!(found[0].devices.keys().copied().collect::<Vec<_>>(), [0, 3]);
    }

    #[test]
    fn a_file_linked_into_auto_counts_once() {
        let etc = dir_with(&[(
            "gpu.cfg",
            "name = \"gpu\"\nhyper_dmabuf = [ \"backend=0\" ]\n",
        )]);
        let auto = etc.path().join("auto");
        std::fs::create_dir(&auto).unwrap();
        std::os::unix::fs::symlink(etc.path().join("gpu.cfg"), auto.join("gpu.cfg")).unwrap();
        let (found, _) = scan(&[auto.clone(), etc.path().into()], &mut Reported::default());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, auto.join("gpu.cfg"));
    }

    #[test]
    fn a_bad_file_is_reported_once_per_version() {
        let etc = dir_with(&[
            ("noname.cfg", "hyper_dmabuf = [ \"backend=0\" ]\n"),
            (
                "bad.cfg",
                "name = \"b\"\nhyper_dmabuf = [ \"ring-page-order=9\" ]\n",
            ),
        ]);
        let dirs = [etc.path().to_path_buf()];
        let mut reported = Reported::default();
        let (found, warnings) = scan(&dirs, &mut reported);
        assert_eq!(found, []);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].text.contains("ring-page-order"),
            "{}",
            warnings[0].text
        );
        assert!(
            warnings[1].text.contains("no `name`"),
            "{}",
            warnings[1].text
        );
        assert_eq!(scan(&dirs, &mut reported).1, [], "reported again");
        // Fixed, then broken again: a new version, a new report.
        std::fs::write(
            etc.path().join("bad.cfg"),
            "name = \"b\"\nhyper_dmabuf = [ \"backend=0\" ]\n",
        )
        .unwrap();
        assert_eq!(scan(&dirs, &mut reported).0.len(), 1);
        std::fs::write(
            etc.path().join("bad.cfg"),
            "name = \"b\"\nhyper_dmabuf = 3\n",
        )
        .unwrap();
        assert_eq!(scan(&dirs, &mut reported).1.len(), 1);
    }

    #[test]
    fn leftovers_are_skipped_and_hard_links_count_once() {
        let gpu = "name = \"gpu\"\nhyper_dmabuf = [ \"backend=0\" ]\n";
        let etc = dir_with(&[
            ("gpu.cfg", gpu),
            ("gpu.cfg~", gpu),
            ("gpu.cfg.dpkg-old", gpu),
            (".gpu.cfg.swp", gpu),
        ]);
        std::fs::hard_link(etc.path().join("gpu.cfg"), etc.path().join("gpu-link.cfg")).unwrap();
        let (found, warnings) = scan(&[etc.path().into()], &mut Reported::default());
        assert_eq!(warnings, []);
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn a_link_that_cannot_be_followed_is_said() {
        let etc = dir_with(&[]);
        std::os::unix::fs::symlink("/nonexistent/hdmabuf/vm.cfg", etc.path().join("vm.cfg"))
            .unwrap();
        let (found, warnings) = scan(&[etc.path().into()], &mut Reported::default());
        assert_eq!(found, []);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].text.contains("cannot follow the link"),
            "{}",
            warnings[0].text
        );
    }

    #[test]
    fn missing_directories_have_no_candidates() {
        let (found, warnings) = scan(
            &[PathBuf::from("/nonexistent/hdmabuf/auto")],
            &mut Reported::default(),
        );
        assert_eq!((found, warnings), (vec![], vec![]));
    }
}
