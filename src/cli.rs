//! The command line: subcommands and what each one does. Settings (see `config`) are shared
//! by every subcommand and come from flags, the environment or `.env`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::ari::{AriClient, capture};
use crate::calls::ingest::Pipeline;
use crate::calls::tracker::{AgentMatcher, Tracker};
use crate::calls::{store, writer};
use crate::config::Settings;
use crate::db::Db;

/// pbxbridge: Asterisk ARI/AMI integration daemon for call centers.
#[derive(Parser, Debug)]
#[command(name = "pbxbridge", version, about, long_about = None)]
pub struct Cli {
    /// Settings (flags or environment variables).
    #[command(flatten)]
    pub settings: Settings,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: ARI call tracking, HTTP API.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Diagnose the install: database, ARI (credentials, app), AMI, the PJSIP include (writable, owned, loaded by Asterisk), CEL, Kerio, Kavkom; a table with a fix per failed line (exit 0 when all are ok, else 1).
    Check,
    /// Record the live ARI event stream to JSON lines (Ctrl-C to stop).
    Capture {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Application name to connect as (default: $ARI_APP-capture, so a running serve keeps its app).
        #[arg(long)]
        app: Option<String>,
    },
    /// Feed a capture (file or capture directory) through the call tracker; print the call
    /// records as JSON lines and store them unless --dry-run.
    Replay {
        /// Capture file (JSON lines) or directory (ari.jsonl [+ rest-at-reconnect.json, ari-after-reconnect.jsonl]).
        path: PathBuf,
        /// Print only; do not touch the database.
        #[arg(long)]
        dry_run: bool,
    },
    /// Backfill calls from Asterisk's CEL (ASTERISK_CEL_URL) for a date range, with a progress
    /// bar: the calls whose last channel ended in [--from, --to], written unless ARI already
    /// recorded them whole. --dry-run prints the records as JSON lines and stores nothing.
    Backfill {
        /// Start of the range (YYYY-MM-DD = midnight UTC, or RFC 3339).
        #[arg(long)]
        from: String,
        /// End of the range (YYYY-MM-DD = midnight UTC, or RFC 3339; default: now).
        #[arg(long)]
        to: Option<String>,
        /// Print the records only; do not touch pbxbridge's database.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the PJSIP include file rendered from the database to stdout (touches nothing:
    /// no migration, no write, no reload).
    Render,
    /// Manage API users (login with POST /auth/login).
    User {
        /// What to do.
        #[command(subcommand)]
        action: UserAction,
    },
    /// Sync call history from a hosted PBX once, for a date range, with a progress bar.
    Sync {
        /// Which hosted PBX.
        #[arg(value_enum)]
        target: SyncTarget,
        /// Start of the range (YYYY-MM-DD or RFC 3339; default: the stored watermark).
        #[arg(long)]
        from: Option<String>,
        /// End of the range (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Only this extension.
        #[arg(long)]
        extension: Option<String>,
    },
}

/// Managing API users (`pbxbridge user ...`).
#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Add a user; the password is read from standard input (prompted on a terminal).
    Add {
        /// Login name.
        name: String,
        /// Rights.
        #[arg(long, value_enum, default_value = "viewer")]
        role: RoleArg,
    },
    /// List users.
    List,
    /// Set a user's password (read like `add`).
    Passwd {
        /// Login name.
        name: String,
    },
    /// Remove a user.
    Remove {
        /// Login name.
        name: String,
    },
}

/// Roles on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RoleArg {
    /// Read and change everything.
    Admin,
    /// Read only.
    Viewer,
}

/// Hosted PBXs that `sync` knows.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SyncTarget {
    /// Kerio Operator.
    Kerio,
    /// Kavkom.
    Kavkom,
}

/// Runs a subcommand; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let settings = cli.settings;
    match cli.command {
        Command::Serve => {
            crate::app::serve(settings).await?;
            Ok(0)
        }
        Command::Migrate => {
            Db::connect_and_migrate(&settings.core.database_url).await?;
            println!("migrations applied");
            Ok(0)
        }
        Command::Check => Ok(check(&settings).await),
        Command::Capture { out, app } => {
            let client = AriClient::new(&settings.ari);
            let app = app.unwrap_or_else(|| format!("{}-capture", settings.ari.ari_app));
            let cancel = CancellationToken::new();
            let stop = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            let n = capture::record(&client, &app, &out, cancel).await?;
            eprintln!("{n} frames written to {}", out.display());
            Ok(0)
        }
        Command::Replay { path, dry_run } => {
            replay(&settings, &path, dry_run).await?;
            Ok(0)
        }
        Command::Backfill { from, to, dry_run } => backfill(&settings, &from, to, dry_run).await,
        Command::User { action } => user(&settings, action).await,
        Command::Render => {
            let db = Db::connect(&settings.core.database_url)
                .await
                .context("database")?;
            let rows = crate::extensions::store::all(&db)
                .await
                .context("reading extensions (has `pbxbridge migrate` been run?)")?;
            print!("{}", crate::extensions::render::render(&rows));
            Ok(0)
        }
        Command::Sync {
            target: SyncTarget::Kerio,
            from,
            to,
            extension,
        } => crate::sync::kerio::cli_sync(&settings, from, to, extension).await,
        Command::Sync {
            target: SyncTarget::Kavkom,
            from,
            to,
            extension,
        } => crate::sync::kavkom::cli_sync(&settings, from, to, extension).await,
    }
}

async fn check(settings: &Settings) -> i32 {
    let lines = crate::check::run(settings).await;
    print!("{}", crate::check::table(&lines));
    if crate::check::all_ok(&lines) { 0 } else { 1 }
}

async fn replay(settings: &Settings, path: &std::path::Path, dry_run: bool) -> anyhow::Result<()> {
    let messages = capture::load(path)?;
    let agents = AgentMatcher::new(settings.core.extension_pattern.clone());
    let (db, writer_task) = if dry_run {
        (None, None)
    } else {
        let db = Db::connect_and_migrate(&settings.core.database_url)
            .await
            .context("database")?;
        let (handle, inbox) = writer::channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(writer::run(db.clone(), inbox, cancel.clone()));
        (Some(db), Some((handle, task, cancel)))
    };
    let mut pipeline = Pipeline::new(
        Tracker::new(agents),
        writer_task.as_ref().map(|w| w.0.clone()),
        None,
        None,
    );
    let mut finals: Vec<crate::calls::CallRecord> = Vec::new();
    for m in messages {
        for u in pipeline.handle(m) {
            match finals.iter_mut().find(|r| r.id == u.record.id) {
                Some(r) => *r = u.record.clone(),
                None => finals.push(u.record.clone()),
            }
        }
    }
    drop(pipeline);
    if let Some((handle, task, cancel)) = writer_task {
        drop(handle);
        cancel.cancel();
        task.await?;
    }
    let now = chrono::Utc::now();
    let mut stdout = std::io::stdout().lock();
    for r in &finals {
        let stored = match &db {
            Some(db) => store::get(db, &r.id.to_string())
                .await?
                .unwrap_or_else(|| r.clone()),
            None => r.clone(),
        };
        writeln!(stdout, "{}", stored.to_json(settings.core.ui_locale, now))?;
    }
    Ok(())
}

/// `pbxbridge backfill`: exit 0 done, 1 when the CEL or pbxbridge database failed, 2 for
/// a missing ASTERISK_CEL_URL or a bad range.
async fn backfill(
    settings: &Settings,
    from: &str,
    to: Option<String>,
    dry_run: bool,
) -> anyhow::Result<i32> {
    use crate::cel::backfill::{Backfill, Window};
    let Some(url) = &settings.cel.asterisk_cel_url else {
        eprintln!(
            "error: CEL backfill is off: set ASTERISK_CEL_URL \
             (postgres://USER@HOST/DB or sqlite:///var/log/asterisk/master.db)"
        );
        return Ok(2);
    };
    let time = |name: &str, v: &str| {
        crate::http::calls::parse_time_param(name, v).map_err(|e| e.to_string())
    };
    let window = match (
        time("--from", from),
        to.as_deref().map(|t| time("--to", t)).transpose(),
    ) {
        (Ok(from), Ok(to)) => Window {
            from,
            to: to.unwrap_or_else(chrono::Utc::now),
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    if window.from > window.to {
        eprintln!("error: --to must not be before --from");
        return Ok(2);
    }
    let agents = AgentMatcher::new(settings.core.extension_pattern.clone());
    let db = if dry_run {
        None
    } else {
        let db = Db::connect_and_migrate(&settings.core.database_url)
            .await
            .with_context(|| format!("database {}", settings.core.database_url))?;
        agents.set_known(
            crate::extensions::store::all(&db)
                .await?
                .into_iter()
                .map(|e| e.extension),
        );
        Some(db)
    };
    let mut b = Backfill::new(url, db, agents);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} calls  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let locale = settings.core.ui_locale;
    let now = chrono::Utc::now();
    let pb = bar.clone();
    let mut print_err: Option<std::io::Error> = None;
    let result = b
        .run_window(window, dry_run, &mut |p, records| {
            pb.set_length(p.calls_total);
            pb.set_position(p.calls_done);
            pb.set_message(format!(
                "{} folded, {} new, {} updated, {} skipped",
                p.report.calls_folded, p.report.inserted, p.report.updated, p.report.skipped
            ));
            if dry_run && print_err.is_none() {
                pb.suspend(|| {
                    let mut out = std::io::stdout().lock();
                    for r in records {
                        if let Err(e) = writeln!(out, "{}", r.to_json(locale, now)) {
                            print_err = Some(e);
                            break;
                        }
                    }
                });
            }
        })
        .await;
    bar.finish_and_clear();
    if let Some(e) = print_err {
        return Err(e.into());
    }
    match result {
        Ok(r) => {
            let line = format!(
                "CEL backfill {window} from {}: {} rows read, {} calls folded, {} new, {} updated, \
                 {} skipped, {} bad rows in {} ms",
                b.redacted_url(),
                r.read_rows,
                r.calls_folded,
                r.inserted,
                r.updated,
                r.skipped,
                r.bad_rows,
                r.ms
            );
            if dry_run {
                eprintln!("{line} (dry run: nothing stored)");
            } else {
                println!("{line}");
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: CEL backfill failed: {e}");
            Ok(1)
        }
    }
}

fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        Ok(rpassword::prompt_password("Password: ")?)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

async fn user(settings: &Settings, action: UserAction) -> anyhow::Result<i32> {
    use crate::users::Role;
    use crate::users::store as users;
    let db = Db::connect_and_migrate(&settings.core.database_url).await?;
    match action {
        UserAction::Add { name, role } => {
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Viewer => Role::Viewer,
            };
            let password = read_password()?;
            match users::add(&db, &name, &password, role).await {
                Ok(u) => println!("user {} added ({:?})", u.username, u.role),
                Err(crate::users::UserError::Db(crate::db::DbError::Conflict { .. })) => {
                    eprintln!("error: a user named {name:?} already exists");
                    return Ok(1);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(1);
                }
            }
            if settings.auth.jwt_secret.is_none() {
                eprintln!("note: set JWT_SECRET before users can log in");
            }
        }
        UserAction::List => {
            for u in users::list(&db).await? {
                println!("{}\t{:?}\t{}", u.username, u.role, u.created_at);
            }
        }
        UserAction::Passwd { name } => {
            let password = read_password()?;
            if let Err(e) = users::set_password(&db, &name, &password).await {
                eprintln!("error: {e}");
                return Ok(1);
            }
            println!("password of {name} changed");
        }
        UserAction::Remove { name } => {
            if let Err(e) = users::remove(&db, &name).await {
                eprintln!("error: {e}");
                return Ok(1);
            }
            println!("user {name} removed");
        }
    }
    Ok(0)
}
