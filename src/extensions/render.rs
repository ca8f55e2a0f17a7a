//! The generated PJSIP include file: rendering (askama template
//! `templates/pjsip_extensions.conf`) and the atomic write.
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

#[derive(Template)]
#[template(path = "pjsip_extensions.conf", escape = "none")]
struct PjsipFile<'a> {
    items: Vec<Item<'a>>,
}

struct Item<'a> {
    extension: &'a str,
    display_name: &'a str,
    context: &'a str,
    transport: &'a str,
    codecs: String,
    realm: &'a str,
    digest: &'a str,
    max_contacts: i64,
}

/// Renders the include file from `rows` (all rows; only enabled ones are written), sorted by
/// number. A row that fails [`validate::check_row`] (changed outside the API) is logged and
/// left out, so it can never inject config.
pub fn render(rows: &[Extension]) -> String {
    let mut sorted: Vec<&Extension> = rows.iter().filter(|e| e.enabled).collect();
    sorted
        .sort_by(|a, b| (a.extension.len(), &a.extension).cmp(&(b.extension.len(), &b.extension)));
    let items = sorted
        .into_iter()
        .filter(|e| match validate::check_row(e) {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(extension = %e.extension.escape_debug(), id = %e.id, "stored extension is invalid and was left out of the PJSIP file: {err}");
                false
            }
        })
        .map(|e| Item {
            extension: &e.extension,
            display_name: &e.display_name,
            context: &e.context,
            transport: &e.transport,
            codecs: e.codecs.join(","),
            realm: &e.realm,
            digest: e.password_digest.expose(),
            max_contacts: e.max_contacts,
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
