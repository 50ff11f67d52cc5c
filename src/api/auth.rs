//! Who is asking, and may they: bearer tokens, roles and their permissions, site scope.
//!
//! The config stores only the SHA-256 of each token. A request's token is hashed and compared with
//! every user's hash in constant time (no early exit on the first match either), so timing tells
//! nothing about which hashes are close. Roles map to permission sets (design.md, "Roles").

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::User;
use crate::roles::{RolePermissions, RoleTable};

pub use crate::roles::{Footage, Permission};

/// An authenticated user.
#[derive(Debug)]
pub struct Principal {
    /// User name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Sites in scope; `None` is all.
    pub sites: Option<Vec<String>>,
    /// What the role may do.
    pub perms: RolePermissions,
}

impl Principal {
    /// Whether the user's role has `p`.
    pub fn can(&self, p: Permission) -> bool {
        self.perms.has(p)
    }

    /// Whether the role may view or export footage for `purpose`.
    pub fn may_footage(&self, kind: Footage, purpose: Option<&str>) -> bool {
        self.perms.footage(kind, purpose)
    }

    /// Whether `site` is in the user's scope.
    pub fn covers_site(&self, site: &str) -> bool {
        self.sites
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == site))
    }
}

/// The users, by token hash.
pub struct Authenticator {
    users: Vec<([u8; 32], Arc<Principal>)>,
}

impl Authenticator {
    /// Builds the table from the config's users.
    pub fn new(users: &[User], roles: &RoleTable) -> Self {
        Self {
            users: users
                .iter()
                .map(|u| {
                    (
                        u.token_sha256,
                        Arc::new(Principal {
                            name: u.name.clone(),
                            role: u.role.clone(),
                            sites: u.sites.clone(),
                            perms: roles.get(&u.role),
                        }),
                    )
                })
                .collect(),
        }
    }

    /// The user whose token this is, from an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Arc<Principal>> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (h, p) in &self.users {
            if bool::from(h.ct_eq(&hash)) {
                found = Some(p.clone());
            }
        }
        found
    }

    /// The user called `name` whose token hashes to `token` (a console session names its user
    /// and the token it was opened with; the principal is looked up in the current config on
    /// every request, so a new token for the user ends the old sessions).
    pub fn by_name_and_token(&self, name: &str, token: &[u8; 32]) -> Option<Arc<Principal>> {
        self.users
            .iter()
            .find(|(h, p)| p.name == name && h == token)
            .map(|(_, p)| p.clone())
    }

    /// The user called `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Principal>> {
        self.users
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(_, p)| p.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_only() {
        let hash: [u8; 32] = Sha256::digest(b"s3cret-token").into();
        let a = Authenticator::new(
            &[User {
                name: "j".into(),
                role: "manager".into(),
                token_sha256: hash,
                sites: None,
            }],
            &RoleTable::default(),
        );
        assert_eq!(
            a.authenticate(Some("Bearer s3cret-token")).unwrap().name,
            "j"
        );
        assert!(a.authenticate(Some("Bearer s3cret-tokeN")).is_none());
        assert!(a.authenticate(Some("s3cret-token")).is_none());
        assert!(a.authenticate(Some("Bearer ")).is_none());
        assert!(a.authenticate(None).is_none());
        assert_eq!(a.by_name("j").unwrap().role, "manager");
        assert!(a.by_name("J").is_none());
    }
}
