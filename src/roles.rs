//! Roles and what they may do: the permission table of the design brief, overridable in config.
//!
//! A role is a set of permission names. Most are plain (`place_hold`, `logbook_read`, ...);
//! footage access is split by kind and purpose, because the protocols tie a look at footage to a
//! reason for it: `view` and `export` allow any purpose, `view:technical` or
//! `export:subject-access` only that purpose. The defaults (design.md, "Roles"):
//!
//! | role | permissions |
//! |---|---|
//! | manager | cameras_status, view, export, place_hold, release_hold, keytags_read, logbook_read, sign_off |
//! | consultant, caretaker | cameras_status, view, export, place_hold |
//! | technician | cameras_status, view:technical |
//! | privacy_officer | cameras_status, view:subject-access, export:subject-access, place_hold, release_hold, erase, keytags_read, logbook_read, sign_off |
//! | access_system | keytags_write |
//! | auditor | cameras_status, logbook_read |
//!
//! `[roles.NAME] permissions = [...]` in the config replaces a default role's set or defines a
//! new role. Site scope is per user, not per role.

use std::collections::{BTreeMap, BTreeSet};

/// A plain permission (footage access is [`Footage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// See cameras, their state and recorded intervals.
    CamerasStatus,
    /// Place a hold.
    PlaceHold,
    /// Release or extend a hold.
    ReleaseHold,
    /// Erase a range early (data-subject request).
    Erase,
    /// Query key-tag events.
    KeytagsRead,
    /// Submit key-tag events.
    KeytagsWrite,
    /// Read and verify the logbook.
    LogbookRead,
    /// Add findings and sign-offs to the logbook.
    SignOff,
}

/// The plain permissions with their config names.
pub const PERMISSIONS: [(&str, Permission); 8] = [
    ("cameras_status", Permission::CamerasStatus),
    ("place_hold", Permission::PlaceHold),
    ("release_hold", Permission::ReleaseHold),
    ("erase", Permission::Erase),
    ("keytags_read", Permission::KeytagsRead),
    ("keytags_write", Permission::KeytagsWrite),
    ("logbook_read", Permission::LogbookRead),
    ("sign_off", Permission::SignOff),
];

/// How footage leaves the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Footage {
    /// Played back (shown, not handed over).
    View,
    /// Exported as a file to keep or hand over.
    Export,
}

impl Footage {
    /// The permission name (`view` / `export`).
    pub fn name(self) -> &'static str {
        match self {
            Footage::View => "view",
            Footage::Export => "export",
        }
    }
}

/// For which purposes a role may view or export footage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Purposes {
    /// Not at all.
    #[default]
    None,
    /// For any purpose.
    Any,
    /// Only for these purposes.
    Only(BTreeSet<String>),
}

impl Purposes {
    /// Whether a request with `purpose` is allowed.
    pub fn allows(&self, purpose: Option<&str>) -> bool {
        match self {
            Purposes::None => false,
            Purposes::Any => true,
            Purposes::Only(set) => purpose.is_some_and(|p| set.contains(p)),
        }
    }

    fn add(&mut self, purpose: Option<&str>) {
        match (purpose, &mut *self) {
            (_, Purposes::Any) => {}
            (None, _) => *self = Purposes::Any,
            (Some(p), Purposes::Only(set)) => {
                set.insert(p.to_owned());
            }
            (Some(p), Purposes::None) => *self = Purposes::Only(BTreeSet::from([p.to_owned()])),
        }
    }
}

/// What one role may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RolePermissions {
    /// Plain permissions.
    pub plain: BTreeSet<Permission>,
    /// Viewing footage.
    pub view: Purposes,
    /// Exporting footage.
    pub export: Purposes,
}

impl RolePermissions {
    /// Parses a list of permission names; the error names the index and the bad name.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, (usize, String)> {
        let mut out = RolePermissions::default();
        for (i, name) in names.iter().enumerate() {
            let name = name.as_ref().trim();
            let (kind, purpose) = match name.split_once(':') {
                Some((k, p)) => (k, Some(p)),
                None => (name, None),
            };
            if purpose.is_some_and(|p| p.is_empty()) {
                return Err((i, format!("{name:?}: the purpose after ':' is empty")));
            }
            match kind {
                "view" => out.view.add(purpose),
                "export" => out.export.add(purpose),
                _ => {
                    let p = PERMISSIONS
                        .iter()
                        .find(|(n, _)| *n == kind && purpose.is_none())
                        .map(|(_, p)| *p)
                        .ok_or_else(|| {
                            let known: Vec<&str> = PERMISSIONS.iter().map(|(n, _)| *n).collect();
                            (
                                i,
                                format!(
                                    "unknown permission {name:?}; one of view, view:PURPOSE, \
                                     export, export:PURPOSE, {}",
                                    known.join(", ")
                                ),
                            )
                        })?;
                    out.plain.insert(p);
                }
            }
        }
        Ok(out)
    }

    /// Whether the role has a plain permission.
    pub fn has(&self, p: Permission) -> bool {
        self.plain.contains(&p)
    }

    /// Whether the role may view or export footage for `purpose`.
    pub fn footage(&self, kind: Footage, purpose: Option<&str>) -> bool {
        match kind {
            Footage::View => self.view.allows(purpose) || self.export.allows(purpose),
            Footage::Export => self.export.allows(purpose),
        }
    }

    /// Whether the role may view or export footage at all (for some purpose).
    pub fn any_footage(&self, kind: Footage) -> bool {
        match kind {
            Footage::View => self.view != Purposes::None || self.export != Purposes::None,
            Footage::Export => self.export != Purposes::None,
        }
    }
}

/// The default permission names of each role of the design brief.
pub fn default_roles() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        (
            "manager",
            &[
                "cameras_status",
                "view",
                "export",
                "place_hold",
                "release_hold",
                "keytags_read",
                "logbook_read",
                "sign_off",
            ][..],
        ),
        (
            "consultant",
            &["cameras_status", "view", "export", "place_hold"][..],
        ),
        (
            "caretaker",
            &["cameras_status", "view", "export", "place_hold"][..],
        ),
        ("technician", &["cameras_status", "view:technical"][..]),
        (
            "privacy_officer",
            &[
                "cameras_status",
                "view:subject-access",
                "export:subject-access",
                "place_hold",
                "release_hold",
                "erase",
                "keytags_read",
                "logbook_read",
                "sign_off",
            ][..],
        ),
        ("access_system", &["keytags_write"][..]),
        ("auditor", &["cameras_status", "logbook_read"][..]),
    ])
}

/// The role table: defaults with the config's `[roles.NAME]` applied.
#[derive(Debug, Clone)]
pub struct RoleTable(BTreeMap<String, RolePermissions>);

impl RoleTable {
    /// The defaults, with `overrides` (already validated) replacing or adding roles.
    pub fn new(overrides: &BTreeMap<String, RolePermissions>) -> Self {
        let mut t: BTreeMap<String, RolePermissions> = default_roles()
            .into_iter()
            .map(|(name, perms)| {
                (
                    name.to_owned(),
                    RolePermissions::parse(perms).expect("default roles parse"),
                )
            })
            .collect();
        for (name, p) in overrides {
            t.insert(name.clone(), p.clone());
        }
        RoleTable(t)
    }

    /// A role's permissions; an unknown role may do nothing.
    pub fn get(&self, role: &str) -> RolePermissions {
        self.0.get(role).cloned().unwrap_or_default()
    }

    /// Whether `role` exists.
    pub fn contains(&self, role: &str) -> bool {
        self.0.contains_key(role)
    }

    /// The role names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl Default for RoleTable {
    fn default() -> Self {
        Self::new(&BTreeMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_is_the_design_brief() {
        use Permission::*;
        let t = RoleTable::default();
        let m = t.get("manager");
        assert!(m.footage(Footage::Export, None) && !m.has(Erase) && !m.has(KeytagsWrite));
        let tech = t.get("technician");
        assert!(tech.footage(Footage::View, Some("technical")));
        assert!(!tech.footage(Footage::View, Some("incident")));
        assert!(!tech.footage(Footage::View, None));
        assert!(!tech.footage(Footage::Export, Some("technical")));
        let po = t.get("privacy_officer");
        assert!(po.footage(Footage::Export, Some("subject-access")));
        assert!(!po.footage(Footage::Export, Some("incident")));
        assert!(po.has(Erase) && !po.has(KeytagsWrite));
        let care = t.get("caretaker");
        assert!(care.has(PlaceHold) && !care.has(ReleaseHold) && !care.has(KeytagsRead));
        let acc = t.get("access_system");
        assert!(acc.has(KeytagsWrite) && !acc.has(CamerasStatus));
        assert!(!acc.any_footage(Footage::View));
        let aud = t.get("auditor");
        assert!(aud.has(LogbookRead) && !aud.any_footage(Footage::View));
        assert_eq!(t.get("nobody"), RolePermissions::default());
    }

    #[test]
    fn config_names_parse_and_bad_ones_are_named() {
        let p = RolePermissions::parse(&["view:technical", "view:incident", "sign_off"]).unwrap();
        assert_eq!(
            p.view,
            Purposes::Only(BTreeSet::from(["incident".into(), "technical".into()]))
        );
        assert!(p.has(Permission::SignOff));
        let p = RolePermissions::parse(&["export:police", "export"]).unwrap();
        assert_eq!(p.export, Purposes::Any);
        assert_eq!(RolePermissions::parse(&["view", "fly"]).unwrap_err().0, 1);
        assert!(RolePermissions::parse(&["view:"]).is_err());
        assert!(RolePermissions::parse(&["erase:x"]).is_err());
    }

    #[test]
    fn overrides_replace_a_role() {
        let o = BTreeMap::from([(
            "technician".to_owned(),
            RolePermissions::parse(&["cameras_status"]).unwrap(),
        )]);
        let t = RoleTable::new(&o);
        assert!(!t.get("technician").any_footage(Footage::View));
        assert!(t.contains("auditor"));
    }
}
