// SPDX-License-Identifier: MIT
//! `hdmabuf xl create`: xl creates the domain paused, we attach the
//! `hyper_dmabuf` devices of its configuration, then xl unpauses it, so
//! that the guest finds its devices from its first boot. xl 4.17 ignores
//! the `hyper_dmabuf` key itself.

use std::process::Command;

use hyper_dmabuf_xenbus_proto::parse;
use hyper_dmabuf_xenbus_proto::schema::DeviceSpec;
use serde_json::json;

use crate::toolstack::{self, Line};
use crate::xlcfg::{Config, Domain, Entry, Located};

/// What `create` needs of the machine: xl, and xenstore through the
/// toolstack module. Tests replace it.
pub(crate) trait Host {
    /// Runs `xl ARGS...`; its standard output, or why it failed.
    fn xl(&mut self, args: &[&str]) -> Result<String, String>;
    /// Creates a device (`toolstack::attach`).
    fn attach(&mut self, spec: &DeviceSpec) -> Result<Vec<Line>, String>;
    /// Removes a device's nodes at once (`toolstack::remove`).
    fn remove(&mut self, spec: &DeviceSpec) -> Result<(), String>;
    /// Records the device for `hdmabuf xl daemon` (`toolstack::record`).
    fn record(&mut self, spec: &DeviceSpec, entry: &Entry) -> Result<(), String>;
    /// Records the new domain, before its devices
    /// (`toolstack::record_domain`).
    fn record_domain(&mut self, domid: u16, name: &str) -> Result<(), String>;
    /// Marks domain `name` as being created here, or removes the mark
    /// (`toolstack::mark_creating`).
    fn mark_creating(&mut self, name: &str, creating: bool) -> Result<(), String>;
}

/// The real machine: `xl` (or `$HDMABUF_XL`) and xenstored.
pub(crate) struct RealHost;

impl Host for RealHost {
    fn xl(&mut self, args: &[&str]) -> Result<String, String> {
        let xl = std::env::var("HDMABUF_XL").unwrap_or_else(|_| "xl".into());
        let what = format!("{xl} {}", args.join(" "));
        let out = Command::new(&xl)
            .args(args)
            .output()
            .map_err(|e| format!("running {what}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{what} failed ({}): {}",
                out.status,
                stderr.trim().lines().last().unwrap_or("no message")
            ))
        }
    }
    fn attach(&mut self, spec: &DeviceSpec) -> Result<Vec<Line>, String> {
        toolstack::attach(spec, false)
    }
    fn remove(&mut self, spec: &DeviceSpec) -> Result<(), String> {
        toolstack::remove(spec)
    }
    fn record(&mut self, spec: &DeviceSpec, entry: &Entry) -> Result<(), String> {
        toolstack::record(spec, entry, true)
    }
    fn record_domain(&mut self, domid: u16, name: &str) -> Result<(), String> {
        toolstack::record_domain(domid, name)
    }
    fn mark_creating(&mut self, name: &str, creating: bool) -> Result<(), String> {
        toolstack::mark_creating(name, creating)
    }
}

/// The domain id of domain `name`, from `xl domid`.
pub(crate) fn domid_of<H: Host>(host: &mut H, name: &str) -> Result<u16, String> {
    let out = host.xl(&["domid", name])?;
    parse::parse_domid(out.trim().as_bytes()).map_err(|_| {
        format!(
            "`xl domid {name}` printed {:?}, not a domain id",
            out.trim()
        )
    })
}

/// The backend domain of `d`, resolving a name with `xl domid`, or
/// refusing it when `host` is `None` (a dry run).
fn backend_of<H: Host>(host: Option<&mut H>, d: &Located) -> Result<u16, String> {
    match (&d.entry.backend, host) {
        (Domain::Id(b), _) => Ok(*b),
        (Domain::Name(n), None) => Err(d
            .error(
                "backend",
                format!(
                    "{n:?} is a domain name, and resolving names needs a running Xen; \
                     give the backend's domain id for a dry run"
                ),
            )
            .to_string()),
        (Domain::Name(n), Some(h)) => domid_of(h, n).map_err(|e| {
            d.error("backend", format!("no domain {n:?}: {e}"))
                .to_string()
        }),
    }
}

/// `--dry-run --domid N`: the nodes every entry would write, treating the
/// new domain as `domid`. Touches neither xl nor xenstore.
pub(crate) fn dry_run(cfg: &Config, domid: u16) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    for d in &cfg.devices {
        let back = backend_of::<RealHost>(None, d)?;
        let lines = toolstack::attach(&d.entry.spec(domid, back), true)
            .map_err(|e| format!("{}:{}: {e}", d.source, d.line))?;
        out.extend(lines);
    }
    Ok(out)
}

/// `hdmabuf xl create CFG XL_ARGS...` with `cfg` read from CFG and the
/// `KEY=VALUE` arguments among `xl_args`.
pub(crate) fn create<H: Host>(
    host: &mut H,
    cfg_path: &str,
    xl_args: &[String],
    cfg: &Config,
) -> Result<Vec<Line>, String> {
    let name = cfg.name.as_deref().ok_or_else(|| {
        format!("{cfg_path}: no `name` (xl needs one too; or give name=... after CFG)")
    })?;
    // Everything that can be checked is, before there is a domain to undo.
    let mut backs = Vec::new();
    for d in &cfg.devices {
        backs.push(backend_of(Some(&mut *host), d)?);
    }
    // The daemon would adopt the new domain from a file of /etc/xen that
    // names it, racing us to its devices: marked until it is recorded.
    host.mark_creating(name, true)?;
    let mut created = create_marked(host, cfg_path, xl_args, cfg, name, backs);
    // A mark left behind is harmless: the daemon drops it once this
    // process is gone.
    if let (Err(e), Ok(out)) = (host.mark_creating(name, false), &mut created) {
        out.push(Line {
            text: format!("warning: {e}"),
            json: json!({ "warning": e }),
        });
    }
    created
}

/// [`create`] once the domain's name is marked.
fn create_marked<H: Host>(
    host: &mut H,
    cfg_path: &str,
    xl_args: &[String],
    cfg: &Config,
    name: &str,
    backs: Vec<u16>,
) -> Result<Vec<Line>, String> {
    let mut args = vec!["create", "-p", cfg_path];
    args.extend(xl_args.iter().map(String::as_str));
    host.xl(&args)?;
    let domid = match domid_of(host, name) {
        Ok(d) => d,
        Err(e) => {
            let undo = host.xl(&["destroy", name]).map_or_else(
                |e| format!("; destroying it failed too: {e}"),
                |_| String::new(),
            );
            return Err(format!(
                "domain {name} was created but its id is unknown: {e}; destroyed it{undo}"
            ));
        }
    };
    let mut out = vec![Line {
        text: format!("created domain {name} (domid {domid}), paused"),
        json: json!({ "created": name, "domid": domid, "paused": true }),
    }];
    let mut attached: Vec<DeviceSpec> = Vec::new();
    // Recorded with its name first: a configuration without a device still
    // makes a domain of this tool's, which the daemon must not adopt from
    // a file of the same name (before its mark goes).
    let mut result = host.record_domain(domid, name);
    let devices = if result.is_ok() {
        &cfg.devices[..]
    } else {
        &[]
    };
    for (d, back) in devices.iter().zip(backs) {
        let spec = d.entry.spec(domid, back);
        let attach = host.attach(&spec).map(|lines| {
            out.extend(lines);
            attached.push(spec);
        });
        // Recorded only once attached, so the daemon never races us to
        // creating the device.
        if let Err(e) = attach.and_then(|()| host.record(&spec, &d.entry)) {
            result = Err(format!("{}:{}: {e}", d.source, d.line));
            break;
        }
    }
    if result.is_ok() {
        result = host.xl(&["unpause", &domid.to_string()]).map(drop);
    }
    if let Err(why) = result {
        // Undo: our nodes first (xl leaves them behind), then the domain.
        let mut undo = String::new();
        for spec in &attached {
            if let Err(e) = host.remove(spec) {
                undo += &format!("; {e}");
            }
        }
        if let Err(e) = host.xl(&["destroy", &domid.to_string()]) {
            undo += &format!("; destroying it failed too: {e}");
        }
        return Err(format!(
            "{why}; destroyed domain {name} (domid {domid}){undo}"
        ));
    }
    out.push(Line {
        text: format!("unpaused domain {name} (domid {domid})"),
        json: json!({ "unpaused": name, "domid": domid }),
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xlcfg;

    /// A scripted host: answers `xl` from a table, records every call.
    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        domids: Vec<(&'static str, &'static str)>,
        fail_xl: Option<&'static str>,
        fail_attach_devid: Option<u32>,
    }

    impl Host for Fake {
        fn xl(&mut self, args: &[&str]) -> Result<String, String> {
            let call = format!("xl {}", args.join(" "));
            self.calls.push(call.clone());
            if self.fail_xl.is_some_and(|f| call.starts_with(f)) {
                return Err(format!("{call} failed"));
            }
            if args[0] == "domid" {
                return self
                    .domids
                    .iter()
                    .find(|(n, _)| *n == args[1])
                    .map(|(_, d)| format!("{d}\n"))
                    .ok_or_else(|| format!("{call} failed: no such domain"));
            }
            Ok(String::new())
        }
        fn attach(&mut self, spec: &DeviceSpec) -> Result<Vec<Line>, String> {
            self.calls.push(format!(
                "attach {} {} {}",
                spec.front, spec.back, spec.devid
            ));
            if self.fail_attach_devid == Some(spec.devid) {
                return Err("xenstore said no".into());
            }
            toolstack::attach(spec, true)
        }
        fn remove(&mut self, spec: &DeviceSpec) -> Result<(), String> {
            self.calls
                .push(format!("remove {} {}", spec.front, spec.devid));
            Ok(())
        }
        fn record(&mut self, spec: &DeviceSpec, entry: &Entry) -> Result<(), String> {
            self.calls
                .push(format!("record {} {}", spec.front, entry.render()));
            Ok(())
        }
        fn mark_creating(&mut self, name: &str, creating: bool) -> Result<(), String> {
            self.calls.push(format!("mark {name} {creating}"));
            Ok(())
        }
        fn record_domain(&mut self, domid: u16, name: &str) -> Result<(), String> {
            self.calls.push(format!("record {domid} name={name}"));
            Ok(())
        }
    }

    const CFG: &str = "name = 'g1'\nhyper_dmabuf = [ 'backend=dd', 'devid=5, rw=1' ]\n";

    fn cfg(text: &str) -> Config {
        xlcfg::parse("g.cfg", text.as_bytes()).unwrap()
    }

    #[test]
    fn create_attaches_every_entry_between_create_and_unpause() {
        let mut h = Fake {
            domids: vec![("g1", "9"), ("dd", "3")],
            ..Fake::default()
        };
        let args = vec!["-q".to_string(), "memory=256".to_string()];
        let lines = create(&mut h, "g.cfg", &args, &cfg(CFG)).unwrap();
        assert_eq!(
            h.calls,
            [
                "xl domid dd",
                // Marked from before the domain exists until it is
                // recorded: the daemon does not adopt it meanwhile.
                "mark g1 true",
                "xl create -p g.cfg -q memory=256",
                "xl domid g1",
                "record 9 name=g1",
                "attach 9 3 0",
                "record 9 backend=dd, devid=0",
                "attach 9 0 5",
                "record 9 backend=0, devid=5, rw=1",
                "xl unpause 9",
                "mark g1 false",
            ]
        );
        assert_eq!(lines[0].text, "created domain g1 (domid 9), paused");
        assert_eq!(lines.last().unwrap().text, "unpaused domain g1 (domid 9)");
    }

    #[test]
    fn a_failed_attach_removes_what_was_attached_and_destroys() {
        let mut h = Fake {
            domids: vec![("g1", "9"), ("dd", "3")],
            fail_attach_devid: Some(5),
            ..Fake::default()
        };
        let e = create(&mut h, "g.cfg", &[], &cfg(CFG)).err().unwrap();
        assert_eq!(
            e,
            "g.cfg:2: xenstore said no; destroyed domain g1 (domid 9)"
        );
        assert_eq!(
            h.calls[4..],
            [
                "record 9 name=g1",
                "attach 9 3 0",
                "record 9 backend=dd, devid=0",
                "attach 9 0 5",
                "remove 9 0",
                "xl destroy 9",
                "mark g1 false"
            ]
        );
    }

    #[test]
    fn a_failed_unpause_destroys() {
        let mut h = Fake {
            domids: vec![("g1", "9"), ("dd", "3")],
            fail_xl: Some("xl unpause"),
            ..Fake::default()
        };
        let e = create(&mut h, "g.cfg", &[], &cfg(CFG)).err().unwrap();
        assert_eq!(e, "xl unpause 9 failed; destroyed domain g1 (domid 9)");
        assert_eq!(
            h.calls[10..],
            ["remove 9 0", "remove 9 5", "xl destroy 9", "mark g1 false"]
        );
    }

    #[test]
    fn an_unknown_backend_stops_before_creating() {
        let mut h = Fake {
            domids: vec![("g1", "9")],
            ..Fake::default()
        };
        let e = create(&mut h, "g.cfg", &[], &cfg(CFG)).err().unwrap();
        assert_eq!(
            e,
            "g.cfg:2: hyper_dmabuf key backend: no domain \"dd\": \
             xl domid dd failed: no such domain"
        );
        assert_eq!(h.calls, ["xl domid dd"]);
    }

    #[test]
    fn a_failed_create_destroys_nothing() {
        let mut h = Fake {
            domids: vec![("g1", "9")],
            fail_xl: Some("xl create"),
            ..Fake::default()
        };
        let e = create(&mut h, "g.cfg", &[], &cfg("name='g1'\nhyper_dmabuf=['']"))
            .err()
            .unwrap();
        assert_eq!(e, "xl create -p g.cfg failed");
        assert_eq!(
            h.calls,
            ["mark g1 true", "xl create -p g.cfg", "mark g1 false"]
        );
    }

    #[test]
    fn no_name_is_an_error() {
        let mut h = Fake::default();
        let e = create(&mut h, "g.cfg", &[], &cfg("hyper_dmabuf=['']"))
            .err()
            .unwrap();
        assert!(e.contains("no `name`"), "{e}");
        assert!(h.calls.is_empty());
    }

    #[test]
    fn dry_run_refuses_backend_names() {
        let e = dry_run(&cfg(CFG), 7).err().unwrap();
        assert_eq!(
            e,
            "g.cfg:2: hyper_dmabuf key backend: \"dd\" is a domain name, and resolving \
             names needs a running Xen; give the backend's domain id for a dry run"
        );
    }

    /// The layout libxl writes for a PV device such as vdispl
    /// (`libxl__device_generic_add`): the frontend directory
    /// `/local/domain/<fe>/device/<type>/<devid>` owned by the frontend and
    /// readable by the backend, the backend directory
    /// `/local/domain/<be>/backend/<type>/<fe>/<devid>` owned by the
    /// backend and readable by the frontend, with `backend`,
    /// `backend-id`, `state` in the first and `frontend`, `frontend-id`,
    /// `online`, `state` in the second; state 1 (Initialising).
    fn libxl_layout(ty: &str, fe: u16, be: u16, devid: u32) -> Vec<String> {
        let f = format!("/local/domain/{fe}/device/{ty}/{devid}");
        let b = format!("/local/domain/{be}/backend/{ty}/{fe}/{devid}");
        let fp = format!("(n{fe},r{be})");
        let bp = format!("(n{be},r{fe})");
        vec![
            format!("{f} = \"\" {fp}"),
            format!("{b} = \"\" {bp}"),
            format!("{f}/backend = \"{b}\" {fp}"),
            format!("{f}/backend-id = \"{be}\" {fp}"),
            format!("{f}/state = \"1\" {fp}"),
            format!("{b}/frontend = \"{f}\" {bp}"),
            format!("{b}/frontend-id = \"{fe}\" {bp}"),
            format!("{b}/online = \"1\" {bp}"),
            format!("{b}/state = \"1\" {bp}"),
        ]
    }

    #[test]
    fn dry_run_reproduces_the_libxl_vdispl_layout() {
        let c = cfg(
            "name = 'g'\nvdispl = [ 'backend=0,be-alloc=1,connectors=1:1024x768' ]\n\
             hyper_dmabuf = [ 'backend=0', \"backend=3, devid=2, ring-page-order=1, \
             max-buffer-mib=64, rw=1\" ]\n",
        );
        let lines: Vec<String> = dry_run(&c, 7)
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect();
        // What libxl writes for vdispl, with the type renamed: the generic
        // nodes, then our parameters in the backend directory.
        let mut expect = libxl_layout("vdispl", 7, 0, 0);
        expect.push("/local/domain/0/backend/vdispl/7/0/feature-rw = \"0\" (n0,r7)".into());
        let mut second = libxl_layout("vdispl", 7, 3, 2);
        let b = "/local/domain/3/backend/vdispl/7/2";
        second.push(format!("{b}/max-ring-page-order = \"1\" (n3,r7)"));
        second.push(format!("{b}/max-buffer-size = \"67108864\" (n3,r7)"));
        second.push(format!("{b}/feature-rw = \"1\" (n3,r7)"));
        expect.extend(second);
        let expect: Vec<String> = expect
            .into_iter()
            .map(|l| l.replace("/vdispl/", "/hyper_dmabuf/"))
            .collect();
        assert_eq!(lines, expect);
    }
}
