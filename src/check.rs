//! `pbxbridge check`: diagnoses a whole install and reports one line per component, with a
//! fix hint for each failed line. Components: the database (reachable, migrated), ARI
//! (reachable, credentials, the Stasis app name), AMI (when `AMI_USERNAME` is set), the PJSIP
//! include file (folder writable, file writable and owned as `PJSIP_FILE_OWNER` says, and
//! actually loaded by Asterisk: the endpoints it defines are asked of ARI; off with
//! `PJSIP_MODE=realtime`), the realtime PJSIP tables (with `PJSIP_MODE=realtime`: PostgreSQL,
//! Asterisk's `ps_endpoints` / `ps_auths` / `ps_aors` present), the CEL source
//! (when `ASTERISK_CEL_URL` is set), Kerio and Kavkom logins (when configured).
//!
//! Nothing is written or reloaded. Secrets never appear in a line (errors are the domain
//! errors, which redact them).

use std::collections::BTreeSet;
use std::path::Path;

use crate::ari::{AriClient, AriError};
use crate::config::{PjsipMode, Settings};
use crate::db::Db;

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Component (`database`, `ari`, `ari app`, `ami`, `pjsip include`, `pjsip realtime`,
    /// `cel`, `kerio`, `kavkom`).
    pub component: &'static str,
    /// `Ok`, `Off` (not configured: not an error) or `Failed`.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (failed lines only).
    pub fix: Option<String>,
}

/// The outcome of one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Ok,
    /// Not configured (optional component).
    Off,
    /// Something is wrong: see the fix.
    Failed,
}

impl Line {
    fn ok(component: &'static str, detail: impl Into<String>) -> Line {
        Line {
            component,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn off(component: &'static str, detail: impl Into<String>) -> Line {
        Line {
            component,
            status: Status::Off,
            detail: detail.into(),
            fix: None,
        }
    }

    fn failed(component: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            component,
            status: Status::Failed,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Whether every line is ok or off.
pub fn all_ok(lines: &[Line]) -> bool {
    lines.iter().all(|l| l.status != Status::Failed)
}

/// The report as a text table: `COMPONENT  STATUS  DETAIL`, and under each failed line an
/// indented `fix: ...` line.
pub fn table(lines: &[Line]) -> String {
    let width = lines
        .iter()
        .map(|l| l.component.len())
        .chain(["COMPONENT".len()])
        .max()
        .unwrap_or(9);
    let mut out = format!("{:width$}  {:6}  DETAIL\n", "COMPONENT", "STATUS");
    for l in lines {
        let status = match l.status {
            Status::Ok => "ok",
            Status::Off => "off",
            Status::Failed => "FAILED",
        };
        out.push_str(&format!(
            "{:width$}  {status:6}  {}\n",
            l.component, l.detail
        ));
        if let Some(fix) = &l.fix {
            out.push_str(&format!("{:width$}  {:6}  fix: {fix}\n", "", ""));
        }
    }
    out
}

/// Checks every component of `settings`.
pub async fn run(settings: &Settings) -> Vec<Line> {
    let mut lines = vec![database(settings).await];
    let nodes = match settings.nodes() {
        Ok(nodes) => nodes,
        Err(e) => {
            lines.push(Line::failed(
                "ari",
                e,
                "set ASTERISK_NODES to name=ARI_URL pairs, e.g. pbx1=http://10.0.0.11:8088",
            ));
            return lines;
        }
    };
    // One ari / ari app / ami line per node (the detail names the node when there are
    // several); the PJSIP include is checked on the first node.
    let named = nodes.len() > 1;
    let mut first: Option<(AriClient, bool)> = None;
    for node in &nodes {
        let client = AriClient::new(&node.ari);
        let ari = client.info().await;
        let mut node_lines = vec![match &ari {
            Ok(info) => Line::ok(
                "ari",
                format!(
                    "Asterisk {} at {}",
                    info.pointer("/system/version")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?"),
                    client.base()
                ),
            ),
            Err(e @ AriError::Unauthorized) => Line::failed(
                "ari",
                e.to_string(),
                "set ARI_USERNAME / ARI_PASSWORD (ASTERISK_<NODE>_ARI_USERNAME / _ARI_PASSWORD for a named node) to a user of /etc/asterisk/ari.conf, then `asterisk -rx \"module reload res_ari.so\"`",
            ),
            Err(e) => Line::failed(
                "ari",
                e.to_string(),
                "check ARI_URL (or the node's URL in ASTERISK_NODES); Asterisk's http.conf needs enabled=yes and bindaddr/bindport matching it, ari.conf enabled=yes",
            ),
        }];
        node_lines.push(ari_app(&client, ari.is_ok()).await);
        node_lines.push(ami(&node.ami).await);
        let cel_setting = if named {
            format!(
                "ASTERISK_{}_CEL_URL",
                node.name.to_ascii_uppercase().replace('-', "_")
            )
        } else {
            "ASTERISK_CEL_URL".to_string()
        };
        node_lines.push(cel(node.cel_url.as_ref(), &cel_setting).await);
        for mut line in node_lines {
            if named {
                line.detail = format!("node {}: {}", node.name, line.detail);
            }
            lines.push(line);
        }
        if first.is_none() {
            first = Some((client, ari.is_ok()));
        }
    }
    let Some((client, ari_ok)) = first else {
        return lines;
    };
    lines.push(pjsip_include(settings, &client, ari_ok).await);
    lines.push(pjsip_realtime(settings).await);
    lines.push(kerio(settings).await);
    lines.push(kavkom(settings).await);
    lines
}

async fn database(settings: &Settings) -> Line {
    let db = match Db::connect(&settings.core.database_url).await {
        Ok(db) => db,
        Err(e) => {
            return Line::failed(
                "database",
                e.to_string(),
                "check DATABASE_URL (sqlite://FILE in a folder pbxbridge may write, or postgres://USER@HOST/DB of a running server)",
            );
        }
    };
    if let Err(e) = db.ping().await {
        return Line::failed(
            "database",
            e.to_string(),
            "check DATABASE_URL and that the database server runs",
        );
    }
    let backend = format!("{:?}", db.backend()).to_lowercase();
    match crate::extensions::store::all(&db).await {
        Ok(_) => Line::ok("database", format!("{backend}, migrated")),
        Err(_) => Line::failed(
            "database",
            format!("{backend} reachable, but the tables are missing"),
            "run `pbxbridge migrate` (serve also migrates at start)",
        ),
    }
}

/// Characters Asterisk's dialplan `Stasis(APP,...)` and ARI's `?app=` take without quoting.
fn valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

async fn ari_app(client: &AriClient, ari_ok: bool) -> Line {
    let app = client.app();
    if !valid_app_name(app) {
        return Line::failed(
            "ari app",
            format!("ARI_APP {app:?} is not a usable Stasis application name"),
            "set ARI_APP to letters, digits, '-', '_' or '.', the name extensions.conf passes to Stasis()",
        );
    }
    if !ari_ok {
        return Line::failed(
            "ari app",
            format!("{app}: cannot ask Asterisk (ARI failed)"),
            "fix the ari line first",
        );
    }
    match client.applications().await {
        Ok(apps) => {
            let registered = apps.iter().any(|a| a["name"] == app);
            Line::ok(
                "ari app",
                if registered {
                    format!("{app}: registered (a pbxbridge serve is connected)")
                } else {
                    format!(
                        "{app}: not registered now (serve registers it; extensions.conf must call Stasis({app},...))"
                    )
                },
            )
        }
        Err(e) => Line::failed(
            "ari app",
            e.to_string(),
            "the ARI user needs read access (ari.conf read_only = no)",
        ),
    }
}

async fn ami(settings: &crate::config::AmiSettings) -> Line {
    let Some(cfg) = crate::ami::AmiConfig::from_settings(settings) else {
        return Line::off("ami", "AMI_USERNAME not set");
    };
    let addr = cfg.addr();
    let cancel = tokio_util::sync::CancellationToken::new();
    let (client, task) = crate::ami::AmiClient::new(cfg, cancel.clone());
    let task = tokio::spawn(task);
    let line = match client.asterisk_version().await {
        Ok(version) => Line::ok("ami", format!("Asterisk {version} at {addr}")),
        Err(e @ crate::ami::AmiError::LoginFailed(_)) => Line::failed(
            "ami",
            e.to_string(),
            "set AMI_USERNAME / AMI_SECRET to a user of /etc/asterisk/manager.conf (read = system,call,reporting; write = system,call,command), then `asterisk -rx \"manager reload\"`",
        ),
        Err(e) => Line::failed(
            "ami",
            e.to_string(),
            "check AMI_HOST / AMI_PORT; manager.conf needs enabled = yes and a bindaddr/port matching them",
        ),
    };
    cancel.cancel();
    let _ = task.await;
    line
}

/// The endpoint section names a generated include defines (`[NAME]` followed by
/// `type = endpoint`).
fn endpoints_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut section: Option<&str> = None;
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            section = Some(name.trim());
        } else if let Some((k, v)) = line.split_once('=')
            && k.trim() == "type"
            && v.trim() == "endpoint"
            && let Some(s) = section
        {
            out.insert(s.to_string());
        }
    }
    out
}

async fn pjsip_include(settings: &Settings, client: &AriClient, ari_ok: bool) -> Line {
    const NAME: &str = "pjsip include";
    if settings.pjsip.pjsip_mode == PjsipMode::Realtime {
        return Line::off(
            NAME,
            "PJSIP_MODE=realtime: extensions go to the ps_* tables",
        );
    }
    let path = settings.pjsip.pjsip_include_path.as_path();
    let shown = path.display();
    let folder = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => Path::new("."),
    };
    let owner_hint = settings
        .pjsip
        .pjsip_file_owner
        .as_deref()
        .unwrap_or("pbxbridge:asterisk");
    if !folder.is_dir() {
        return Line::failed(
            NAME,
            format!("folder {} does not exist", folder.display()),
            format!(
                "install -d -o pbxbridge -g asterisk -m 2750 {} (inside /etc/asterisk)",
                folder.display()
            ),
        );
    }
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable(folder) {
        return Line::failed(
            NAME,
            format!(
                "folder {} is not writable by this user (the file is replaced by a rename)",
                folder.display()
            ),
            format!(
                "chown {owner_hint} {0} && chmod 2750 {0}; under systemd add it to ReadWritePaths",
                folder.display()
            ),
        );
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Line::ok(
                NAME,
                format!("{shown}: not written yet (serve writes it at start); folder writable"),
            );
        }
        Err(e) => {
            return Line::failed(
                NAME,
                format!("{shown}: cannot be read: {e}"),
                format!("chown {owner_hint} {shown} && chmod 0640 {shown}"),
            );
        }
    };
    if !writable(path) {
        return Line::failed(
            NAME,
            format!("{shown} is not writable by this user"),
            format!("chown {owner_hint} {shown} && chmod 0640 {shown}"),
        );
    }
    if let Some(spec) = &settings.pjsip.pjsip_file_owner {
        match crate::extensions::render::parse_owner(spec) {
            Ok(owner) => {
                use std::os::unix::fs::MetadataExt;
                if let Ok(meta) = std::fs::metadata(path)
                    && (meta.uid() != owner.uid.as_raw() || meta.gid() != owner.gid.as_raw())
                {
                    return Line::failed(
                        NAME,
                        format!(
                            "{shown} is owned by {}:{}, PJSIP_FILE_OWNER says {spec}",
                            meta.uid(),
                            meta.gid()
                        ),
                        format!("chown {spec} {shown}"),
                    );
                }
            }
            Err(e) => {
                return Line::failed(NAME, e, "set PJSIP_FILE_OWNER to an existing user:group");
            }
        }
    }
    let defined = endpoints_in(&text);
    if defined.is_empty() {
        return Line::ok(
            NAME,
            format!(
                "{shown}: writable, no extension in it yet (whether Asterisk includes it shows once one is added)"
            ),
        );
    }
    if !ari_ok {
        return Line::failed(
            NAME,
            format!("{shown}: cannot ask Asterisk whether it loads the file (ARI failed)"),
            "fix the ari line first",
        );
    }
    let known: BTreeSet<String> = match client.endpoints().await {
        Ok(eps) => eps
            .into_iter()
            .filter(|e| e.technology.eq_ignore_ascii_case("PJSIP"))
            .map(|e| e.resource)
            .collect(),
        Err(e) => {
            return Line::failed(
                NAME,
                format!("{shown}: cannot list Asterisk's endpoints: {e}"),
                "fix the ari line first",
            );
        }
    };
    let missing: Vec<&String> = defined.iter().filter(|n| !known.contains(*n)).collect();
    if missing.len() == defined.len() {
        let file = path
            .strip_prefix("/etc/asterisk/")
            .unwrap_or(path)
            .display()
            .to_string();
        return Line::failed(
            NAME,
            format!(
                "Asterisk loads none of the {} endpoint(s) of {shown} (e.g. {})",
                defined.len(),
                missing.first().map(|s| s.as_str()).unwrap_or("?")
            ),
            format!(
                "add `#tryinclude {file}` at the end of /etc/asterisk/pjsip.conf, make the file readable by Asterisk (group asterisk, mode 0640), then `asterisk -rx \"module reload res_pjsip.so\"`"
            ),
        );
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
        return Line::failed(
            NAME,
            format!(
                "included, but Asterisk has not loaded {} endpoint(s) of it: {}",
                missing.len(),
                names.join(", ")
            ),
            "see GET /extensions (provisioning error) and Asterisk's log for the rejected sections; `asterisk -rx \"module reload res_pjsip.so\"`",
        );
    }
    Line::ok(
        NAME,
        format!(
            "{shown}: writable, included by Asterisk ({} endpoint(s) loaded)",
            defined.len()
        ),
    )
}

/// `PJSIP_MODE=realtime`: PostgreSQL, and Asterisk's realtime tables in it.
async fn pjsip_realtime(settings: &Settings) -> Line {
    use crate::extensions::realtime::{self, RealtimeError, SCHEMA_FILE};
    const NAME: &str = "pjsip realtime";
    if settings.pjsip.pjsip_mode != PjsipMode::Realtime {
        return Line::off(NAME, "PJSIP_MODE=file");
    }
    if !settings.core.database_url.is_postgres() {
        return Line::failed(
            NAME,
            crate::config::REALTIME_NEEDS_POSTGRES,
            "set DATABASE_URL=postgres://... (the database Asterisk's res_pgsql.conf reads), or PJSIP_MODE=file",
        );
    }
    let db = match Db::connect(&settings.core.database_url).await {
        Ok(db) => db,
        Err(e) => return Line::failed(NAME, e.to_string(), "fix the database line first"),
    };
    let line = match realtime::schema(&db).await {
        Ok(_) => {
            let owned = realtime::owned_counts(&db).await.unwrap_or_default();
            let n: i64 = owned.values().sum();
            Line::ok(
                NAME,
                format!("ps_endpoints, ps_auths, ps_aors present; {n} row(s) written by pbxbridge"),
            )
        }
        Err(e @ RealtimeError::MissingTables(_)) => Line::failed(
            NAME,
            e.to_string(),
            format!(
                "psql \"$DATABASE_URL\" -f {SCHEMA_FILE} (or Asterisk's alembic upgrade head); then sorcery.conf, extconfig.conf, res_pgsql.conf from asterisk-conf/ on every node"
            ),
        ),
        Err(e) => Line::failed(NAME, e.to_string(), "fix the database line first"),
    };
    db.close().await;
    line
}

/// The CEL table of one node (`url`: its CEL URL; `setting`: the variable that sets it).
async fn cel(url: Option<&crate::config::Secret>, setting: &str) -> Line {
    let Some(url) = url else {
        return Line::off("cel", format!("{setting} not set (no CEL backfill)"));
    };
    match crate::cel::store::CelStore::connect(url.expose()).await {
        Ok(store) => {
            store.close().await;
            Line::ok("cel", "cel table readable")
        }
        Err(e @ crate::cel::CelError::Schema { .. }) => Line::failed(
            "cel",
            e.to_string(),
            "create the cel table (asterisk-conf/cel-pgsql.sql, or cel_sqlite3_custom.conf) and enable CEL in cel.conf",
        ),
        Err(e) => Line::failed(
            "cel",
            e.to_string(),
            format!(
                "check {setting} (postgres://USER:PASSWORD@HOST/DB or sqlite:///var/log/asterisk/master.db readable by pbxbridge)"
            ),
        ),
    }
}

async fn kerio(settings: &Settings) -> Line {
    let k = &settings.kerio;
    if k.kerio_pbx_host.is_none() && k.kerio_api_url.is_none() {
        return Line::off("kerio", "KERIO_PBX_HOST not set");
    }
    let options = crate::sync::kerio::client::ClientOptions::default();
    let client = match crate::sync::kerio::client::KerioClient::new(k, options) {
        Ok(c) => c,
        Err(e) => {
            return Line::failed(
                "kerio",
                e.to_string(),
                "set KERIO_PBX_HOST (or KERIO_API_URL), KERIO_API_USERNAME and KERIO_API_PASSWORD",
            );
        }
    };
    match client.login().await {
        Ok(()) => {
            client.logout().await;
            Line::ok("kerio", format!("logged in at {}", client.endpoint()))
        }
        Err(e) => Line::failed(
            "kerio",
            e.to_string(),
            "check KERIO_API_USERNAME / KERIO_API_PASSWORD (an admin of the appliance) and KERIO_TLS_INSECURE / KERIO_CA_FILE for its certificate",
        ),
    }
}

async fn kavkom(settings: &Settings) -> Line {
    let Some(token) = settings.kavkom.kavkom_api_token.clone() else {
        return Line::off("kavkom", "KAVKOM_API_TOKEN not set");
    };
    let options = crate::sync::kavkom::client::ClientOptions::default();
    let client =
        match crate::sync::kavkom::client::KavkomClient::new(&settings.kavkom, token, options) {
            Ok(c) => c,
            Err(e) => {
                return Line::failed("kavkom", e.to_string(), "fix the KAVKOM_* setting named");
            }
        };
    match client.verify().await {
        Ok(_) => Line::ok("kavkom", "token and domain accepted"),
        Err(e) => Line::failed(
            "kavkom",
            e.to_string(),
            "check KAVKOM_API_TOKEN and KAVKOM_DOMAIN_UUID (Kavkom web app, advanced settings) and KAVKOM_API_URL",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_from_the_generated_file() {
        let text = "; generated\n[1001]\ntype = endpoint\nauth = 1001\n\n[1001]\ntype=auth\n[1002] ; x\ntype=endpoint\n[t]\ntype = aor\n";
        let got: Vec<String> = endpoints_in(text).into_iter().collect();
        assert_eq!(got, ["1001", "1002"]);
    }

    #[test]
    fn table_shows_a_fix_under_failed_lines() {
        let t = table(&[
            Line::ok("database", "sqlite, migrated"),
            Line::failed("ari", "refused", "set ARI_PASSWORD"),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("COMPONENT"));
        assert!(lines[1].starts_with("database   ok "));
        assert!(lines[2].starts_with("ari        FAILED  refused"));
        assert!(lines[3].trim_start().starts_with("fix: set ARI_PASSWORD"));
        assert!(valid_app_name("callcenter") && !valid_app_name("a b") && !valid_app_name(""));
    }
}
