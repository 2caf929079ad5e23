//! A PostgreSQL cluster of a test's own, with `wal_level=logical` (the machine's server runs
//! with `replica`): initialised from the installed server binaries in a temporary directory and
//! started on a free port; stopped and removed when dropped. PostgreSQL refuses to run as
//! root, so as root the cluster runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LogicalPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// The newest installed server's binaries (`/usr/lib/postgresql/<version>/bin`).
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries are installed under /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an installed PostgreSQL server with initdb").1
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a server binary, as `postgres` when this process is root.
fn run(bin: &Path, args: &[&str]) {
    let status = if is_root() {
        Command::new("runuser").args(["-u", "postgres", "--"]).arg(bin).args(args).status()
    } else {
        Command::new(bin).args(args).status()
    }
    .expect("the PostgreSQL binary runs");
    assert!(status.success(), "{} {args:?} failed: {status}", bin.display());
}

impl LogicalPostgres {
    pub async fn start() -> LogicalPostgres {
        let dir = tempfile::Builder::new().prefix("keystone-pg-").tempdir().unwrap();
        if is_root() {
            let ok = Command::new("chown").args(["postgres", dir.path().to_str().unwrap()]).status().unwrap();
            assert!(ok.success());
        }
        let bin = server_bin();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        run(&bin.join("initdb"), &["-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c wal_level=logical -c max_replication_slots=10 \
             -c max_wal_senders=10 -c fsync=off -c timezone=UTC -c wal_sender_timeout=4s",
            dir.path().display()
        );
        let log = dir.path().join("server.log");
        run(&bin.join("pg_ctl"), &["-D", data, "-o", &options, "-l", log.to_str().unwrap(), "-w", "start"]);
        LogicalPostgres { dir, bin, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for LogicalPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let args = ["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"];
        let _ = if is_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&pg_ctl).args(args).status()
        } else {
            Command::new(&pg_ctl).args(args).status()
        };
    }
}
