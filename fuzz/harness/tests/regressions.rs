// SPDX-License-Identifier: MIT
//! Replays every input under `fuzz/regressions/<target>/` through its
//! target, so that a crash the fuzzer once found stays fixed.
//!
//! To keep a crash: copy libFuzzer's artifact
//! (`fuzz/artifacts/<target>/crash-*`) to `fuzz/regressions/<target>/`
//! with a name that says what it was, fix the bug, run `cargo test`.
//! Inputs that still fail because of a known, reported defect live under
//! `fuzz/regressions/known/<target>/` (skipped here) with an `#[ignore]`d
//! test of their own that says what is wrong, until the fix lands.

use std::path::{Path, PathBuf};

use hdmabuf_fuzz::{target, TARGETS};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../regressions")
}

fn replay(dir: &Path, run: fn(&[u8])) -> Vec<String> {
    let mut failed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return failed;
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for file in files {
        let input = std::fs::read(&file).expect("readable input");
        if std::panic::catch_unwind(|| run(&input)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    failed
}

#[test]
fn regressions_stay_fixed() {
    let root = root();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries {
            let path = entry.expect("readable").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() && name != "known" {
                assert!(target(name).is_some(), "regressions/{name}: no such target");
            }
        }
    }
    let mut failed = Vec::new();
    for t in TARGETS {
        failed.extend(replay(&root.join(t.name), t.run));
    }
    assert!(failed.is_empty(), "regressions failing again: {failed:#?}");
}
