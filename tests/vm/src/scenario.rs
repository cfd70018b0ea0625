// SPDX-License-Identifier: MIT
//! Scenario files: plain shell scripts under `tests/vm/scenarios/` with a
//! header of `# hdm: KEY = VALUE` lines.
//!
//! Keys (all optional):
//!
//! * `description` — one line shown by `list`.
//! * `domains` — the domUs to create, space separated, each `TYPE` or
//!   `NAME:TYPE` with TYPE `pv` or `pvh` (config `/etc/xen/TYPE.cfg`).
//! * `timeout` — seconds each phase of the script may run (default 120).
//! * `boot-timeout` — seconds each domU may take to come up (default 120).
//! * `dom0-boot-timeout` — seconds Xen + dom0 may take to come up
//!   (default 180).
//! * `expect-log` — `DOMAIN: TEXT`: after the run, the log of DOMAIN
//!   (`dom0`, `xen` or a domU name) must contain TEXT. Repeatable.
//! * `expect-fail` — `STEP: TEXT`: the run is a negative test: it passes
//!   only if it fails in STEP with TEXT in the failure reason.
//! * `extra.NAME` — extra kernel command line for domU NAME (read by
//!   dom0's init, not by the runner).
//! * `dom0` — `busybox` (the default: the embedded platform's initramfs)
//!   or `debian` (the Debian dom0 on a disk, platform/build-debian-dom0.sh).
//! * `dom0-boots` — how many times dom0 boots from the same disk (Debian
//!   dom0 only; default 1): each boot is a run of its own, with
//!   `hdm.boot=N` on dom0's command line.
//!
//! Every limit is a hang detector, not a measurement: the runner's
//! `--time-scale` stretches all of them (see [`Scenario::scaled`]), and the
//! domains stretch their own waits by the same factor (`hdm_limit` in
//! platform/images/lib.sh).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a domU is virtualised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainType {
    /// Paravirtualised guest.
    Pv,
    /// PVH guest.
    Pvh,
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
        })
    }
}

/// What dom0 boots from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dom0Kind {
    /// The embedded platform's initramfs (busybox).
    Busybox,
    /// The Debian dom0: systemd on an ext4 disk made from Debian's packages.
    Debian,
}

/// One domU a scenario creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainSpec {
    /// Domain name (xl `name=`), also the prefix of its console lines.
    pub name: String,
    /// PV or PVH.
    pub kind: DomainType,
}

/// A check on a log after the run: the log of `domain` contains `text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectLog {
    /// `xen`, `dom0` or a domU name.
    pub domain: String,
    /// Fixed text one line must contain.
    pub text: String,
}

/// The failure a negative scenario must produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectFail {
    /// Name of the step that must fail.
    pub step: String,
    /// Text the failure reason must contain.
    pub text: String,
}

/// A parsed scenario file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Scenario name: the file name without `.sh`.
    pub name: String,
    /// File name inside the scenarios directory (and `/hdm/scenarios/`).
    pub file_name: String,
    /// One line of description.
    pub description: String,
    /// DomUs to create, in order.
    pub domains: Vec<DomainSpec>,
    /// Time limit of each scenario phase.
    pub timeout: Duration,
    /// Time limit for each domU to come up.
    pub boot_timeout: Duration,
    /// Time limit for Xen + dom0 to come up.
    pub dom0_boot_timeout: Duration,
    /// The percentage the limits above were scaled by (100 as parsed);
    /// the runner's own fixed limits scale by it too.
    pub time_scale: u32,
    /// Checks on the logs after a successful run.
    pub expect_log: Vec<ExpectLog>,
    /// Set for a negative test.
    pub expect_fail: Option<ExpectFail>,
    /// What dom0 boots from.
    pub dom0: Dom0Kind,
    /// How many times dom0 boots from the same disk.
    pub dom0_boots: u32,
}

/// Finds scenario `name` (`smoke` or `smoke.sh`) in `dir` and parses it.
pub fn load(dir: &Path, name: &str) -> Result<Scenario, String> {
    let file = if name.ends_with(".sh") {
        name.to_string()
    } else {
        format!("{name}.sh")
    };
    let path: PathBuf = dir.join(&file);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("scenario {}: {e}", path.display()))?;
    parse(&file, &text).map_err(|e| format!("scenario {}: {e}", path.display()))
}

/// Lists the scenario file names in `dir`, sorted.
pub fn list(dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sh") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

impl Scenario {
    /// The scenario with every time limit at `percent` % of what its file
    /// says: a slow or loaded host takes longer for everything, and a
    /// limit sized on a quick one would fail a run that only ran slowly.
    pub fn scaled(mut self, percent: u32) -> Self {
        let scale = |d: Duration| d * percent / 100;
        self.timeout = scale(self.timeout);
        self.boot_timeout = scale(self.boot_timeout);
        self.dom0_boot_timeout = scale(self.dom0_boot_timeout);
        self.time_scale = self.time_scale * percent / 100;
        self
    }
}

fn seconds(key: &str, value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "`{key}` needs a positive number of seconds, got `{value}`"
        )),
    }
}

fn split_colon(key: &str, value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => {
            Ok((a.trim().to_string(), b.trim().to_string()))
        }
        _ => Err(format!("`{key}` needs `NAME: TEXT`, got `{value}`")),
    }
}

/// Parses the header of scenario file `file_name` with contents `text`.
pub fn parse(file_name: &str, text: &str) -> Result<Scenario, String> {
    let mut s = Scenario {
        name: file_name.trim_end_matches(".sh").to_string(),
        file_name: file_name.to_string(),
        description: String::new(),
        domains: Vec::new(),
        timeout: Duration::from_secs(120),
        boot_timeout: Duration::from_secs(120),
        dom0_boot_timeout: Duration::from_secs(180),
        time_scale: 100,
        expect_log: Vec::new(),
        expect_fail: None,
        dom0: Dom0Kind::Busybox,
        dom0_boots: 1,
    };
    for (n, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("# hdm:") else {
            continue;
        };
        let Some((key, value)) = rest.split_once('=') else {
            return Err(format!("line {}: `# hdm:` line without `=`", n + 1));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "description" => s.description = value.to_string(),
            "domains" => {
                for spec in value.split_whitespace() {
                    let (name, kind) = spec.split_once(':').unwrap_or((spec, spec));
                    let kind = match kind {
                        "pv" => DomainType::Pv,
                        "pvh" => DomainType::Pvh,
                        _ => {
                            return Err(format!("line {}: unknown domain type in `{spec}`", n + 1))
                        }
                    };
                    if name == "dom0" || name == "xen" || s.domains.iter().any(|d| d.name == name) {
                        return Err(format!(
                            "line {}: domain name `{name}` reserved or repeated",
                            n + 1
                        ));
                    }
                    s.domains.push(DomainSpec {
                        name: name.to_string(),
                        kind,
                    });
                }
            }
            "timeout" => s.timeout = seconds(key, value)?,
            "boot-timeout" => s.boot_timeout = seconds(key, value)?,
            "dom0-boot-timeout" => s.dom0_boot_timeout = seconds(key, value)?,
            "expect-log" => {
                let (domain, text) = split_colon(key, value)?;
                s.expect_log.push(ExpectLog { domain, text });
            }
            "expect-fail" => {
                let (step, text) = split_colon(key, value)?;
                s.expect_fail = Some(ExpectFail { step, text });
            }
            "dom0" => {
                s.dom0 = match value {
                    "busybox" => Dom0Kind::Busybox,
                    "debian" => Dom0Kind::Debian,
                    _ => return Err(format!("line {}: `dom0` is busybox or debian", n + 1)),
                }
            }
            "dom0-boots" => {
                s.dom0_boots = value
                    .parse()
                    .ok()
                    .filter(|b| (1..=9).contains(b))
                    .ok_or_else(|| format!("line {}: `dom0-boots` is 1 to 9", n + 1))?;
            }
            // Read by dom0's init: extra kernel arguments, xl settings, a
            // config file line or the hyper_dmabuf entries of a domU, and
            // whether domUs get a hyper_dmabuf device on dom0.
            k if ["extra.", "xl.", "cfg.", "hyper_dmabuf.", "auto."]
                .iter()
                .any(|p| k.starts_with(p)) => {}
            "attach" if value == "yes" || value == "no" => {}
            _ => return Err(format!("line {}: unknown key `{key}`", n + 1)),
        }
    }
    if s.dom0_boots > 1 && s.dom0 != Dom0Kind::Debian {
        return Err("`dom0-boots` needs `dom0 = debian` (an initramfs keeps nothing)".into());
    }
    for e in &s.expect_log {
        if e.domain != "dom0" && e.domain != "xen" && !s.domains.iter().any(|d| d.name == e.domain)
        {
            return Err(format!("expect-log names unknown domain `{}`", e.domain));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_stretches_every_limit() {
        let s = parse(
            "slow.sh",
            "# hdm: timeout = 30\n# hdm: boot-timeout = 15\n# hdm: dom0-boot-timeout = 40\n",
        )
        .unwrap()
        .scaled(250);
        assert_eq!(s.timeout, Duration::from_secs(75));
        assert_eq!(s.boot_timeout, Duration::from_millis(37_500));
        assert_eq!(s.dom0_boot_timeout, Duration::from_secs(100));
    }

    #[test]
    fn parses_header() {
        let s = parse(
            "smoke.sh",
            "#!/bin/sh\n# hdm: domains = pv guest2:pvh\n# hdm: timeout = 30\n\
             # hdm: expect-log = guest2: role: domU PVH\n# hdm: extra.pv = a=b\n\
             # hdm: expect-fail = create pv: did not come up\necho hi\n",
        )
        .unwrap();
        assert_eq!(s.name, "smoke");
        assert_eq!(
            s.domains,
            vec![
                DomainSpec {
                    name: "pv".into(),
                    kind: DomainType::Pv
                },
                DomainSpec {
                    name: "guest2".into(),
                    kind: DomainType::Pvh
                },
            ]
        );
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.boot_timeout, Duration::from_secs(120));
        assert_eq!(s.expect_log[0].text, "role: domU PVH");
        assert_eq!(s.expect_fail.unwrap().step, "create pv");
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(parse("a.sh", "# hdm: colour = red\n").is_err());
        assert!(parse("a.sh", "# hdm: domains = hvm\n").is_err());
        assert!(parse("a.sh", "# hdm: domains = pv pv\n").is_err());
        assert!(parse("a.sh", "# hdm: timeout = 0\n").is_err());
        assert!(parse("a.sh", "# hdm: expect-log = nobody: x\n").is_err());
        assert!(parse("a.sh", "# hdm: dom0 = fedora\n").is_err());
        assert!(parse("a.sh", "# hdm: dom0-boots = 2\n").is_err());
        assert!(parse("a.sh", "# hdm: dom0 = debian\n# hdm: dom0-boots = 0\n").is_err());
        let d = parse("d.sh", "# hdm: dom0 = debian\n# hdm: dom0-boots = 2\n").unwrap();
        assert_eq!((d.dom0, d.dom0_boots), (Dom0Kind::Debian, 2));
    }

    #[test]
    fn repo_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let names = list(&dir).unwrap();
        assert!(names.iter().any(|n| n == "smoke.sh"));
        for n in names {
            load(&dir, &n).unwrap();
        }
    }
}
