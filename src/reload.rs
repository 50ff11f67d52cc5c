//! Live config reload (SIGHUP): what changed between the running config and a newly loaded one.
//!
//! Pure comparison; `crate::daemon` applies the result. A reload is refused whole when a key that
//! only takes effect at start changed ([`restart_keys`]); otherwise cameras are compared by their
//! [`CameraSpec`] (everything that reaches the camera task: its own settings, its password, its
//! site's policy, the segment length), and users, roles, policies and sites by name for the
//! logbook entry's [`Summary`]. No summary ever carries a token hash or a password: only names.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::config::{Camera, Config, Secret};

/// The keys that differ between `old` and `new` and only take effect at start, each with the
/// message to log (`storage.data_dir: changed; needs a restart ...`). Empty: the reload may go on.
pub fn restart_keys(old: &Config, new: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            out.push((
                key.to_owned(),
                "changed; needs a restart (the running value is kept)".to_owned(),
            ));
        }
    };
    let (o, n) = (&old.storage, &new.storage);
    check("storage.data_dir", o.data_dir != n.data_dir);
    check("storage.bucket", o.bucket != n.bucket);
    check(
        "storage.segment_target",
        o.segment_target != n.segment_target,
    );
    check("storage.sync_interval", o.sync_interval != n.sync_interval);
    let (o, n) = (&old.http, &new.http);
    check("http.listen", o.listen != n.listen);
    check("http.tls_cert", o.tls_cert != n.tls_cert);
    check("http.tls_key", o.tls_key != n.tls_key);
    check("http.header_timeout", o.header_timeout != n.header_timeout);
    check("http.idle_timeout", o.idle_timeout != n.idle_timeout);
    check(
        "http.max_connections",
        o.max_connections != n.max_connections,
    );
    let (o, n) = (&old.logbook, &new.logbook);
    check("logbook.key_file", o.key_file != n.key_file);
    check("logbook.unkeyed", o.unkeyed != n.unkeyed);
    check(
        "logbook.checkpoint_dir",
        o.checkpoint_dir != n.checkpoint_dir,
    );
    check(
        "logbook.checkpoint_interval",
        o.checkpoint_interval != n.checkpoint_interval,
    );
    let (o, n) = (&old.clock, &new.clock);
    check("clock.jump_threshold", o.jump_threshold != n.jump_threshold);
    check("clock.jump_confirm", o.jump_confirm != n.jump_confirm);
    out
}

/// Everything about a camera that its task depends on: when it differs, the camera restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraSpec {
    /// The camera's own settings (its position in the file, `key`, left out).
    pub camera: Camera,
    /// Its password (compared only; never shown: `Secret`'s `Debug` is redacted).
    pub secret: Option<Secret>,
    /// Its policy's name (through its site): the segments it writes carry it. The policy's
    /// settings are not part of this: a changed retention or review period reaches the writer's
    /// retention map and the sweeper without touching the camera (no gap).
    pub policy: String,
    /// SHA-256 of the `tls_ca_file` it was started with (a CA file replaced at the same path
    /// restarts the camera, so the new CA is really used).
    pub tls_ca_sha256: Option<[u8; 32]>,
}

impl CameraSpec {
    /// The spec of `camera` in `config` with its loaded password.
    pub fn new(config: &Config, camera: &Camera, secret: Option<Secret>) -> CameraSpec {
        let policy = config.camera_policy(camera).to_owned();
        let mut camera = camera.clone();
        camera.key = String::new();
        CameraSpec {
            tls_ca_sha256: None,
            camera,
            secret,
            policy,
        }
    }
}

/// Names added, removed and changed between two keyed collections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// New names.
    pub added: Vec<String>,
    /// Names gone.
    pub removed: Vec<String>,
    /// Names in both whose settings differ.
    pub changed: Vec<String>,
}

impl Delta {
    /// Compares two maps by key and value.
    pub fn of<V: PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> Delta {
        let mut d = Delta::default();
        for (k, v) in new {
            match old.get(k) {
                None => d.added.push(k.clone()),
                Some(o) if o != v => d.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        d.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        d
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn short(&self) -> String {
        let mut parts = Vec::new();
        parts.extend(self.added.iter().map(|n| format!("+{n}")));
        parts.extend(self.removed.iter().map(|n| format!("-{n}")));
        parts.extend(self.changed.iter().map(|n| format!("~{n}")));
        parts.join(" ")
    }

    fn json(&self) -> serde_json::Value {
        json!({ "added": self.added, "removed": self.removed, "changed": self.changed })
    }
}

/// What a reload changes, by name (the logbook entry's object and the log line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cameras (changed: anything in its [`CameraSpec`]).
    pub cameras: Delta,
    /// Users (changed: role, sites or token).
    pub users: Delta,
    /// Role overrides (`[roles.NAME]`).
    pub roles: Delta,
    /// Policies.
    pub policies: Delta,
    /// Sites.
    pub sites: Delta,
    /// Other settings that take effect at once (sweeper interval, free-space floor, the writer
    /// queue's budget, hold and key-tag limits, `http.metrics_require_auth`), by key.
    pub settings: Vec<String>,
}

impl Summary {
    /// Compares the running config with the new one; `specs` are the camera specs of both.
    pub fn of(
        old: &Config,
        new: &Config,
        old_specs: &BTreeMap<String, CameraSpec>,
        new_specs: &BTreeMap<String, CameraSpec>,
    ) -> Summary {
        let users = |c: &Config| -> BTreeMap<String, crate::config::User> {
            c.users
                .iter()
                .map(|u| (u.name.clone(), u.clone()))
                .collect()
        };
        let sites = |c: &Config| -> BTreeMap<String, String> {
            c.sites
                .iter()
                .map(|s| (s.id.clone(), s.policy.clone()))
                .collect()
        };
        let mut settings = Vec::new();
        if old.sweeper.interval != new.sweeper.interval {
            settings.push("sweeper.interval".to_owned());
        }
        if old.storage.writer_queue != new.storage.writer_queue {
            // Also when "auto" follows a changed number of cameras.
            settings.push("storage.writer_queue".to_owned());
        }
        if old.storage.min_free != new.storage.min_free {
            settings.push("storage.min_free".to_owned());
        }
        if old.holds.max_future != new.holds.max_future {
            settings.push("holds.max_future".to_owned());
        }
        if old.keytags.max_range != new.keytags.max_range {
            settings.push("keytags.max_range".to_owned());
        }
        if old.http.metrics_require_auth != new.http.metrics_require_auth {
            settings.push("http.metrics_require_auth".to_owned());
        }
        Summary {
            cameras: Delta::of(old_specs, new_specs),
            users: Delta::of(&users(old), &users(new)),
            roles: Delta::of(&old.roles, &new.roles),
            policies: Delta::of(&old.policies, &new.policies),
            sites: Delta::of(&sites(old), &sites(new)),
            settings,
        }
    }

    /// The summary as the logbook entry's object.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "cameras": self.cameras.json(),
            "users": self.users.json(),
            "roles": self.roles.json(),
            "policies": self.policies.json(),
            "sites": self.sites.json(),
            "settings": self.settings,
        })
    }
}

impl std::fmt::Display for Summary {
    /// `cameras +d -c ~b; users +erin -bob` (only what changed; `no change` when nothing did).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, d) in [
            ("cameras", &self.cameras),
            ("users", &self.users),
            ("roles", &self.roles),
            ("policies", &self.policies),
            ("sites", &self.sites),
        ] {
            if !d.is_empty() {
                parts.push(format!("{name} {}", d.short()));
            }
        }
        if !self.settings.is_empty() {
            parts.push(format!("settings {}", self.settings.join(" ")));
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The keys of a refused reload's errors, without repeats, for the logbook entry.
pub fn error_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    keys.into_iter()
        .map(|k| if k.is_empty() { "(file)" } else { k }.to_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[storage]
data_dir = "/tmp/hf"
[http]
listen = "127.0.0.1:8480"
[logbook]
unkeyed = true
[policies.standard]
video = "7d"
keytags = "7d"
[policies.long]
video = "28d"
keytags = "7d"
[[sites]]
id = "noord"
policy = "standard"
[[cameras]]
id = "a"
site = "noord"
url = "rtsp://10.0.0.1/a"
[[cameras]]
id = "b"
site = "noord"
url = "rtsp://10.0.0.2/b"
[[users]]
name = "ann"
role = "manager"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
sites = ["*"]
"#;

    fn specs(c: &Config) -> BTreeMap<String, CameraSpec> {
        c.cameras
            .iter()
            .map(|cam| (cam.id.clone(), CameraSpec::new(c, cam, None)))
            .collect()
    }

    #[test]
    fn restart_keys_name_what_changed_and_nothing_else() {
        let old = Config::parse(BASE).unwrap();
        assert!(restart_keys(&old, &old.clone()).is_empty());
        let new = Config::parse(
            &BASE
                .replace("/tmp/hf", "/tmp/other")
                .replace("8480", "8481"),
        )
        .unwrap();
        let keys: Vec<_> = restart_keys(&old, &new).into_iter().map(|k| k.0).collect();
        assert_eq!(keys, ["storage.data_dir", "http.listen"]);
        assert!(restart_keys(&old, &new)[0].1.contains("needs a restart"));
    }

    #[test]
    fn the_writer_queue_budget_is_applied_at_once_also_when_auto_follows_the_cameras() {
        let old = Config::parse(BASE).unwrap();
        let set = Config::parse(&BASE.replace(
            "data_dir = \"/tmp/hf\"",
            "data_dir = \"/tmp/hf\"\nwriter_queue = \"1GiB\"",
        ))
        .unwrap();
        assert!(restart_keys(&old, &set).is_empty());
        let s = Summary::of(&old, &set, &specs(&old), &specs(&set));
        assert_eq!(s.settings, ["storage.writer_queue"]);
        // "auto" grows with the site: 4 MiB a camera past 64 cameras. A site of 82 (BASE's two
        // and 80 more) that adds one changes the budget, which must not make adding a camera
        // need a restart.
        let cams = |n: usize| -> String {
            (0..n)
                .map(|i| {
                    format!(
                        "[[cameras]]\nid = \"c{i}\"\nsite = \"noord\"\nurl = \"rtsp://10.0.1.1/{i}\"\n"
                    )
                })
                .collect()
        };
        let with = |n| Config::parse(&BASE.replace("[[users]]", &(cams(n) + "[[users]]"))).unwrap();
        let (c80, c81) = (with(80), with(81));
        assert_ne!(c80.storage.writer_queue, c81.storage.writer_queue);
        assert!(restart_keys(&c80, &c81).is_empty());
        let s = Summary::of(&c80, &c81, &specs(&c80), &specs(&c81));
        assert_eq!(s.cameras.added, ["c80"]);
        assert_eq!(s.settings, ["storage.writer_queue"]);
    }

    #[test]
    fn a_camera_changes_with_its_url_or_its_site_policy_but_not_its_position() {
        let old = Config::parse(BASE).unwrap();
        // Camera a moves to the end of the file: same spec (its key differs).
        let moved = BASE.replace(
            "[[cameras]]\nid = \"a\"\nsite = \"noord\"\nurl = \"rtsp://10.0.0.1/a\"\n",
            "",
        ) + "[[cameras]]\nid = \"a\"\nsite = \"noord\"\nurl = \"rtsp://10.0.0.1/a\"\n";
        let new = Config::parse(&moved).unwrap();
        assert!(Delta::of(&specs(&old), &specs(&new)).is_empty());
        let url = Config::parse(&BASE.replace("10.0.0.2/b", "10.0.0.9/b")).unwrap();
        let d = Delta::of(&specs(&old), &specs(&url));
        assert_eq!(d.changed, ["b"]);
        // The site's policy changes: both cameras restart.
        let policy = Config::parse(&BASE.replace(
            "id = \"noord\"\npolicy = \"standard\"",
            "id = \"noord\"\npolicy = \"long\"",
        ))
        .unwrap();
        assert_eq!(Delta::of(&specs(&old), &specs(&policy)).changed, ["a", "b"]);
        // The policy's settings change (shorter retention): no camera restarts.
        let longer = Config::parse(&BASE.replace("video = \"7d\"", "video = \"6d\"")).unwrap();
        assert_ne!(
            old.policies, longer.policies,
            "the test changes a policy's settings"
        );
        assert!(Delta::of(&specs(&old), &specs(&longer)).is_empty());
        // A different password (same source) changes the spec too.
        let a = &old.cameras[0];
        assert_ne!(
            CameraSpec::new(&old, a, Some(Secret::new("x".into()))),
            CameraSpec::new(&old, a, Some(Secret::new("y".into())))
        );
    }

    #[test]
    fn the_summary_names_users_by_name_and_never_shows_a_token_hash() {
        let old = Config::parse(BASE).unwrap();
        let text = BASE.replace(
            "0000000000000000000000000000000000000000000000000000000000000001",
            "00000000000000000000000000000000000000000000000000000000000000ff",
        ) + "[[users]]\nname = \"erin\"\nrole = \"manager\"\ntoken_sha256 = \"00000000000000000000000000000000000000000000000000000000000000ee\"\nsites = [\"noord\"]\n"
            + "[[cameras]]\nid = \"d\"\nsite = \"noord\"\nurl = \"rtsp://10.0.0.4/d\"\n";
        let new = Config::parse(&text).unwrap();
        let s = Summary::of(&old, &new, &specs(&old), &specs(&new));
        assert_eq!(s.to_string(), "cameras +d; users +erin ~ann");
        let json = s.to_json().to_string();
        assert!(!json.contains("00000000"), "{json}");
        assert_eq!(s.users.added, ["erin"]);
        assert_eq!(
            Summary::of(&old, &old, &specs(&old), &specs(&old)).to_string(),
            "no change"
        );
    }

    #[test]
    fn error_keys_are_sorted_without_repeats() {
        assert_eq!(
            error_keys(["cameras[1].url", "", "cameras[1].url", "http.listen"]),
            ["(file)", "cameras[1].url", "http.listen"]
        );
    }
}
