//! `keystone admin ...`: bootstrap and repair commands run next to the database, without a
//! browser. Passwords never reach the log: they are read from stdin or written to a 0600 file.

use keystone_control::auth::Principal;
use keystone_control::goal::{Declaration, Goal};
use keystone_control::store::Store;
use keystone_control::users::{upsert_user, UserError};
use keystone_control::{Role, TeamSpec};
use rand::distributions::{Alphanumeric, DistString};
use std::io::Read;
use std::path::Path;

/// The principal admin commands act as, recorded as the author of their revisions.
fn operator() -> Principal {
    Principal { user_id: "cli".into(), display: "cli".into(), role: Role::Admin, teams: vec![] }
}

/// Creates a team (idempotent: an existing team is left as is).
pub async fn create_team(store: &Store, name: &str, description: &str) -> anyhow::Result<()> {
    let who = operator();
    let goal = Goal::new(store, &who);
    if goal.get(keystone_control::Kind::Team, "", name).await.is_ok() {
        println!("Team {name} already exists.");
        return Ok(());
    }
    let spec = TeamSpec { description: description.to_owned(), alert_webhook: None };
    goal.create("", name, Declaration::Team(spec), "created by `keystone admin`")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("Created team {name}.");
    Ok(())
}

/// Where a new user's password comes from.
pub enum PasswordSource<'a> {
    /// Read one line from standard input.
    Stdin,
    /// Generate one and write it to this file (mode 0600).
    GenerateInto(&'a Path),
}

pub async fn create_user(
    store: &Store,
    username: &str,
    role: Role,
    teams: &[String],
    password: PasswordSource<'_>,
    replace: bool,
) -> anyhow::Result<()> {
    let pw = match password {
        PasswordSource::Stdin => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s.lines().next().unwrap_or_default().to_owned()
        }
        PasswordSource::GenerateInto(_) => Alphanumeric.sample_string(&mut rand::rngs::OsRng, 20),
    };
    match upsert_user(store, username, &pw, role, teams, replace).await {
        Ok(_) => {
            let action = if replace { "user reset" } else { "user created" };
            let detail = format!("role {role}, teams {}", teams.join(", "));
            store.record_account_event("keystone admin (command line)", username, action, &detail).await;
        }
        Err(UserError::Invalid(v)) => anyhow::bail!("{v}"),
        Err(UserError::Store(e)) => return Err(e.into()),
    }
    if let PasswordSource::GenerateInto(path) = password {
        write_secret_file(path, &pw)?;
        println!("Created {role} {username}; the password is in {}.", path.display());
    } else {
        println!("Created {role} {username}.");
    }
    Ok(())
}

/// First-run set-up: when no user exists, creates team `platform` and admin `admin` with a
/// generated password written to `password_file`. Does nothing otherwise.
pub async fn bootstrap(store: &Store, password_file: &Path) -> anyhow::Result<()> {
    if store.user_count().await? > 0 {
        println!("Users exist already; nothing to bootstrap.");
        return Ok(());
    }
    create_team(store, "platform", "The platform team").await?;
    create_user(store, "admin", Role::Admin, &["platform".into()], PasswordSource::GenerateInto(password_file), false)
        .await
}

fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    writeln!(f, "{secret}")
}
