use clap::{Parser, Subcommand};
use keystone::admin::{self, PasswordSource};
use keystone::settings::Settings;
use keystone::startup::Application;
use keystone_control::store::Store;
use keystone_control::Role;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keystone: self-service real-time stream processing.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Config file (default: keystone.toml in the working directory, if present).
    #[arg(long, global = true, env = "KEYSTONE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the console and the JSON API.
    Serve,
    /// Measure parts of the platform on this machine (see README, "Figures").
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Administer users and teams directly in the database.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user. The password is read from stdin, or generated into --password-file.
    CreateUser {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = parse_role, default_value = "editor")]
        role: Role,
        /// Team to join (repeatable).
        #[arg(long = "team")]
        teams: Vec<String>,
        /// Generate a password and write it to this file (mode 0600) instead of reading stdin.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Reset the password and role of an existing user.
        #[arg(long)]
        replace: bool,
    },
    /// Create a team.
    CreateTeam {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// On an empty database, create team `platform` and admin `admin` with a generated password.
    Bootstrap {
        #[arg(long)]
        password_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable appends to the embedded log: throughput and fsyncs, sequential and concurrent.
    Log {
        /// Events per scenario.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Payload bytes per event.
        #[arg(long, default_value_t = 256)]
        size: usize,
    },
    /// The whole platform in-process: ingest proxy -> log -> filter + projection route -> sink.
    Pipeline {
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Concurrent producers.
        #[arg(long, default_value_t = 8)]
        producers: usize,
        /// Events per ingest request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Also deliver to PostgreSQL at this URL (creates table keystone_bench_plays).
        #[arg(long)]
        postgres_url: Option<String>,
    },
    /// Server render time of the jobs overview with many routes (each running its job).
    Overview {
        #[arg(long, default_value_t = 5000)]
        jobs: usize,
        /// Requests timed per page.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| "expected viewer, editor or admin".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_sessions=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let settings = Settings::load(cli.config)?;
    match cli.command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            println!("Keystone console: http://127.0.0.1:{}/", app.port());
            app.run_until_stopped().await?;
        }
        Command::Bench { command: BenchCommand::Log { events, size } } => {
            keystone::bench::log(&settings.data_dir.join("bench"), events, size).await?;
        }
        Command::Bench { command: BenchCommand::Pipeline { events, producers, batch, partitions, postgres_url } } => {
            let shape = keystone::bench::PipelineBench { events, producers, batch, partitions, postgres_url };
            keystone::bench::pipeline(&settings.data_dir.join("bench-pipeline"), shape).await?;
        }
        Command::Bench { command: BenchCommand::Overview { jobs, rounds } } => {
            keystone::bench::overview(&settings.data_dir.join("bench-overview"), jobs, rounds).await?;
        }
        Command::Admin { command } => {
            std::fs::create_dir_all(&settings.data_dir)?;
            let store = Store::connect(&settings.database_url()).await?;
            match command {
                AdminCommand::CreateUser { username, role, teams, password_file, replace } => {
                    let source = match &password_file {
                        Some(p) => PasswordSource::GenerateInto(p),
                        None => PasswordSource::Stdin,
                    };
                    admin::create_user(&store, &username, role, &teams, source, replace).await?;
                }
                AdminCommand::CreateTeam { name, description } => {
                    admin::create_team(&store, &name, &description).await?
                }
                AdminCommand::Bootstrap { password_file } => admin::bootstrap(&store, &password_file).await?,
            }
        }
    }
    Ok(())
}
