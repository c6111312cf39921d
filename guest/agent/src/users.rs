//! Resolve a user name against the image's /etc/passwd and /etc/group (read with every
//! symlink confined to the image root).

use std::path::Path;

use crate::error::{AgentError, Result};
use crate::util::read_in_root;

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
}

fn passwd(root: &Path) -> Vec<Passwd> {
    read_in_root(root, "etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Passwd { name: f[0].to_string(), uid: f[2].parse().ok()?, gid: f[3].parse().ok()? })
        })
        .collect()
}

/// Supplementary groups: groups of /etc/group that list `name` as a member.
fn groups_of(root: &Path, name: &str, primary: u32) -> Vec<u32> {
    read_in_root(root, "etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let gid: u32 = f[2].parse().ok()?;
            (gid != primary && f[3].split(',').any(|m| m.trim() == name)).then_some(gid)
        })
        .collect()
}

/// `name` (or a numeric uid) → (uid, gid, supplementary gids).
pub fn resolve(root: &Path, name: &str) -> Result<(u32, u32, Vec<u32>)> {
    if name.is_empty() || name.len() > 256 || name.contains([':', '\n', '\0']) {
        return Err(AgentError::invalid(format!("invalid username {name:?}")));
    }
    let users = passwd(root);
    if let Ok(uid) = name.parse::<u32>() {
        let (gid, groups) = by_uid(root, uid);
        let _ = users;
        return Ok((uid, gid, groups));
    }
    let u = users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| AgentError::invalid(format!("user {name:?} not found in the image's /etc/passwd")))?;
    Ok((u.uid, u.gid, groups_of(root, &u.name, u.gid)))
}

/// For a numeric uid: its primary gid (0 when unknown) and supplementary groups.
pub fn by_uid(root: &Path, uid: u32) -> (u32, Vec<u32>) {
    match passwd(root).into_iter().find(|u| u.uid == uid) {
        Some(u) => {
            let g = groups_of(root, &u.name, u.gid);
            (u.gid, g)
        }
        None => (0, vec![]),
    }
}
