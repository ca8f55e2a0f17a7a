//! What an extension becomes in Asterisk, said once: [`sections`] gives the PJSIP objects
//! (endpoint, auth, aor) with their options; the include file (askama template
//! `templates/pjsip_extensions.conf`, `PJSIP_MODE=file`) and the realtime rows
//! (`extensions::realtime`, `PJSIP_MODE=realtime`) are both made from it. Also the atomic
//! write of the file.
//!
//! Every enabled extension becomes endpoint `[N]`, auth `[N-auth]` and aor `[N]`, with
//! settings for softphones behind NAT (PortSIP): `direct_media=no`, `rtp_symmetric=yes`,
//! `force_rport=yes`, `rewrite_contact=yes`, `dtmf_mode=rfc4733`, `remove_existing=yes`,
//! `qualify_frequency=30`. The output has no timestamp, so the same rows give the same bytes
//! and an unchanged file is neither written nor reloaded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use askama::Template;
use nix::unistd::{Gid, Group, Uid, User};

use super::model::Extension;
use super::validate;

/// The kind of a PJSIP object (its `type =`; in realtime, its table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SectionKind {
    /// `type = endpoint` (table `ps_endpoints`).
    Endpoint,
    /// `type = auth` (table `ps_auths`).
    Auth,
    /// `type = aor` (table `ps_aors`).
    Aor,
}

impl SectionKind {
    /// The `type =` value: `endpoint`, `auth`, `aor`.
    pub fn as_str(self) -> &'static str {
        match self {
            SectionKind::Endpoint => "endpoint",
            SectionKind::Auth => "auth",
            SectionKind::Aor => "aor",
        }
    }
}

/// How an auth section carries the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// Asterisk 22.2+ `auth_type = digest`, `password_digest = MD5:<hex>,SHA-256:<hex>`
    /// (the include file).
    Digest,
    /// `auth_type = md5`, `md5_cred = <hex>` (the MD5 HA1 of `user:realm:password`), the
    /// credential every Asterisk's realtime `ps_auths` accepts.
    Md5Cred,
}

/// One PJSIP object: kind, id (section name / row id) and its options in file order, each
/// an option name as Asterisk's pjsip.conf and the alembic column both call it, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// Kind.
    pub kind: SectionKind,
    /// Section name / row id (`1001`, `1001-auth`).
    pub id: String,
    /// `(option, value)`, without `type`.
    pub options: Vec<(&'static str, String)>,
}

/// The three objects of an enabled, valid extension: endpoint `N`, auth `N-auth`, aor `N`.
/// `auth` chooses the credential form.
pub fn sections(e: &Extension, auth: AuthStyle) -> [Section; 3] {
    let n = &e.extension;
    let callerid = if e.display_name.is_empty() {
        format!("<{n}>")
    } else {
        format!("\"{}\" <{n}>", e.display_name)
    };
    let s = |v: &str| v.to_string();
    let endpoint = Section {
        kind: SectionKind::Endpoint,
        id: n.clone(),
        options: vec![
            ("context", e.context.clone()),
            ("transport", e.transport.clone()),
            ("disallow", s("all")),
            ("allow", e.codecs.join(",")),
            ("auth", format!("{n}-auth")),
            ("aors", n.clone()),
            ("callerid", callerid),
            ("direct_media", s("no")),
            ("rtp_symmetric", s("yes")),
            ("force_rport", s("yes")),
            ("rewrite_contact", s("yes")),
            ("dtmf_mode", s("rfc4733")),
        ],
    };
    let digest = e.password_digest.expose();
    let credential = match auth {
        AuthStyle::Digest => vec![
            ("auth_type", s("digest")),
            ("username", n.clone()),
            ("realm", e.realm.clone()),
            ("password_digest", digest.to_string()),
        ],
        AuthStyle::Md5Cred => vec![
            ("auth_type", s("md5")),
            ("username", n.clone()),
            ("realm", e.realm.clone()),
            ("md5_cred", md5_part(digest).unwrap_or_default().to_string()),
        ],
    };
    let auth = Section {
        kind: SectionKind::Auth,
        id: format!("{n}-auth"),
        options: credential,
    };
    let aor = Section {
        kind: SectionKind::Aor,
        id: n.clone(),
        options: vec![
            ("max_contacts", e.max_contacts.to_string()),
            ("remove_existing", s("yes")),
            ("qualify_frequency", s("30")),
        ],
    };
    [endpoint, auth, aor]
}

/// The MD5 hex of a stored `MD5:<hex>,SHA-256:<hex>` digest.
fn md5_part(digest: &str) -> Option<&str> {
    digest.strip_prefix("MD5:")?.split(',').next()
}

/// The enabled rows that pass [`validate::check_row`], sorted by number (length, then
/// text). A row that fails (changed outside the API) is logged and left out, so it can never
/// inject config.
pub fn provisioned(rows: &[Extension]) -> Vec<&Extension> {
    let mut sorted: Vec<&Extension> = rows.iter().filter(|e| e.enabled).collect();
    sorted
        .sort_by(|a, b| (a.extension.len(), &a.extension).cmp(&(b.extension.len(), &b.extension)));
    sorted
        .into_iter()
        .filter(|e| match validate::check_row(e) {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(extension = %e.extension.escape_debug(), id = %e.id, "stored extension is invalid and was left out of PJSIP provisioning: {err}");
                false
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "pjsip_extensions.conf", escape = "none")]
struct PjsipFile {
    items: Vec<Item>,
}

struct Item {
    extension: String,
    sections: [Section; 3],
}

/// Renders the include file from `rows` (all rows; only those [`provisioned`] gives are
/// written).
pub fn render(rows: &[Extension]) -> String {
    let items = provisioned(rows)
        .into_iter()
        .map(|e| Item {
            extension: e.extension.clone(),
            sections: sections(e, AuthStyle::Digest),
        })
        .collect();
    let mut out = PjsipFile { items }.render().unwrap_or_else(|e| {
        // Rendering into a String cannot fail for this template; keep the daemon up anyway.
        tracing::error!("PJSIP template failed to render: {e}");
        String::new()
    });
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Owner (`user:group` or `user`) of the generated file, resolved to ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: Uid,
    /// Group id.
    pub gid: Gid,
}

/// Resolves `PJSIP_FILE_OWNER` (`asterisk:asterisk`, `asterisk`, or numeric ids). Errors name
/// the user or group that does not exist.
pub fn parse_owner(s: &str) -> Result<Owner, String> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u.trim(), Some(g.trim())),
        None => (s.trim(), None),
    };
    let u = match user.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)),
        Err(_) => User::from_name(user),
    }
    .map_err(|e| format!("PJSIP_FILE_OWNER: user {user:?}: {e}"))?
    .ok_or_else(|| format!("PJSIP_FILE_OWNER: no user {user:?}"))?;
    let gid = match group {
        None | Some("") => u.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)
                    .map_err(|e| format!("PJSIP_FILE_OWNER: group {g:?}: {e}"))?
                    .ok_or_else(|| format!("PJSIP_FILE_OWNER: no group {g:?}"))?
                    .gid
            }
        },
    };
    Ok(Owner { uid: u.uid, gid })
}

/// Writes `content` to `path` atomically unless the file already holds exactly it: a
/// temporary file in the same folder (mode 0640, owner `owner` when given), fsync, rename
/// over `path`, fsync of the folder. Creates the folder when missing. Returns true when
/// written, false when unchanged. Blocking: call from `spawn_blocking`.
pub fn write_atomic(path: &Path, content: &[u8], owner: Option<Owner>) -> io::Result<bool> {
    match fs::read(path) {
        Ok(old) if old == content => return Ok(false),
        _ => {}
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("pjsip_extensions.conf");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(content)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(0o640))?;
        if let Some(o) = owner {
            nix::unistd::fchown(&f, Some(o.uid), Some(o.gid)).map_err(io::Error::from)?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}
