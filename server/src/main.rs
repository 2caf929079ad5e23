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
    /// Run the console, the JSON API and ingest, and the control plane; with the default role
    /// also the route jobs.
    Serve {
        /// all: everything (one machine); control: no route jobs (they run on workers); ingest:
        /// console, API and ingest only. Overrides KEYSTONE_ROLE.
        #[arg(long, value_enum)]
        role: Option<keystone::settings::ProcessRole>,
    },
    /// Run route jobs only, sharing each route's job with the other workers through its Kafka
    /// consumer group (needs streams on Kafka and the shared PostgreSQL database).
    Worker {
        /// Run only the routes whose `job.pool` is this (default: the routes without a pool).
        /// Overrides KEYSTONE_POOL.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Measure parts of the platform on this machine (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Administer users and teams directly in the database.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Declare a team's streams, sinks and routes from a YAML file through the API: shows the
    /// changes, then makes them. Applying the same file again changes nothing.
    Apply {
        #[command(flatten)]
        remote: Remote,
        /// The pipeline file.
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Why (recorded with every revision the file creates).
        #[arg(long, default_value = "keystone apply")]
        reason: String,
    },
    /// Show what `apply` would change, without changing anything.
    Diff {
        #[command(flatten)]
        remote: Remote,
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Print a team's streams, sinks and routes as a pipeline file.
    Get {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        team: String,
    },
}

/// Where the API is and who is calling.
#[derive(clap::Args)]
struct Remote {
    /// The Keystone server.
    #[arg(long, env = "KEYSTONE_URL", default_value = "http://127.0.0.1:3000")]
    url: String,
    /// An API token (`kt_...`), created in the console.
    #[arg(long, env = "KEYSTONE_TOKEN", hide_env_values = true)]
    token: String,
}

impl Remote {
    fn client(self) -> keystone::apply::Client {
        keystone::apply::Client {
            base: self.url.trim_end_matches('/').to_owned(),
            token: self.token,
            http: reqwest::Client::new(),
        }
    }
}

/// Reads and checks a pipeline file; a bad file ends the command with the line of the problem.
fn read_pipeline(file: &std::path::Path) -> anyhow::Result<keystone::apply::Pipeline> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(keystone::apply::parse(&file.display().to_string(), &text)?)
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user. The password is read from stdin, or generated into --password-file.
    CreateUser {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = parse_role, default_value = "editor")]
        role: Role,
        /// Team to join (repeatable); `--team beta:viewer` gives another role on that team.
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
        /// Offered load in events/s, spread over the producers (default: as fast as acks come
        /// back). Ack latency below saturation, rather than with requests queueing.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Route jobs spread over 1, 2, 3... `keystone worker` processes on Kafka and PostgreSQL.
    Workers {
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Worker counts, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        workers: Vec<usize>,
        #[arg(long, default_value_t = 12)]
        partitions: u32,
        /// A PostgreSQL server; each run creates (and drops) a database on it.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        /// A Kafka cluster; default: librdkafka's mock cluster in this process.
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Streaming SQL: Nexmark bids in the log, each query run by a processor job into a sink
    /// that drops its results.
    Nexmark {
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        #[arg(long, default_value_t = 2)]
        partitions: u32,
        /// Events per second of event time (Nexmark's default).
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
    },
    /// Change data capture: COPY's ceiling, rows captured and applied per second, and the lag
    /// at half that rate, on a PostgreSQL with wal_level=logical (one of its own by default).
    Cdc {
        #[arg(long, default_value_t = 200_000)]
        rows: u64,
        /// A database with wal_level=logical; default: a cluster started from the installed
        /// PostgreSQL binaries in a temporary directory.
        #[arg(long)]
        url: Option<String>,
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
                .unwrap_or_else(|_| "info,sqlx=warn,tower_sessions=warn,pg_walstream=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    // The declarative commands talk to a server; they need no local settings or database.
    match cli.command {
        Command::Apply { remote, file, reason } => {
            let pipeline = read_pipeline(&file)?;
            let client = remote.client();
            let plan = client.plan(&pipeline).await?;
            print!("{}", keystone::apply::render(&pipeline.team, &plan));
            let outcome = client.apply(&pipeline.team, &plan, &reason).await?;
            for line in &outcome.held {
                println!("{line}");
            }
            println!("{} change(s) applied, {} waiting for approval.", outcome.applied, outcome.held.len());
            return Ok(());
        }
        Command::Diff { remote, file } => {
            let pipeline = read_pipeline(&file)?;
            let plan = remote.client().plan(&pipeline).await?;
            print!("{}", keystone::apply::render(&pipeline.team, &plan));
            return Ok(());
        }
        Command::Get { remote, team } => {
            let client = remote.client();
            let mut sections = Vec::new();
            use keystone_control::Kind;
            for kind in [Kind::Stream, Kind::Source, Kind::Sink, Kind::Route, Kind::Processor] {
                sections.push((kind, client.get(&team, kind).await?));
            }
            print!("{}", keystone::apply::to_yaml(&team, &sections)?);
            return Ok(());
        }
        _ => {}
    }
    let settings = Settings::load(cli.config)?;
    match cli.command {
        Command::Apply { .. } | Command::Diff { .. } | Command::Get { .. } => unreachable!("handled above"),
        Command::Serve { role } => {
            let mut settings = settings;
            if let Some(role) = role {
                settings.role = role;
            }
            if settings.role == keystone::settings::ProcessRole::Worker {
                anyhow::bail!("the worker role is `keystone worker`");
            }
            let app = Application::build(settings).await?;
            println!("Keystone console: http://127.0.0.1:{}/", app.port());
            app.run_until_stopped().await?;
        }
        Command::Worker { pool } => {
            let mut settings = settings;
            if pool.is_some() {
                settings.pool = pool;
            }
            let worker = keystone::startup::Worker::build(settings).await?;
            println!("Keystone worker running route jobs; Ctrl-C drains them and hands their partitions over.");
            worker.run_until_stopped().await;
        }
        Command::Bench { command: BenchCommand::Log { events, size } } => {
            keystone::bench::log(&settings.data_dir.join("bench"), events, size).await?;
        }
        Command::Bench {
            command: BenchCommand::Pipeline { events, producers, batch, partitions, postgres_url, rate },
        } => {
            let shape = keystone::bench::PipelineBench { events, producers, batch, partitions, postgres_url, rate };
            keystone::bench::pipeline(&settings.data_dir.join("bench-pipeline"), shape).await?;
        }
        Command::Bench { command: BenchCommand::Workers { events, workers, partitions, postgres_url, brokers } } => {
            let shape = keystone::bench::WorkersBench { events, workers, partitions, postgres_url, brokers };
            keystone::bench::workers(&settings.data_dir.join("bench-workers"), shape).await?;
        }
        Command::Bench { command: BenchCommand::Nexmark { events, partitions, rate } } => {
            keystone::bench_nexmark::nexmark(&settings.data_dir.join("bench-nexmark"), events, partitions, rate)
                .await?;
        }
        Command::Bench { command: BenchCommand::Cdc { rows, url } } => {
            keystone::bench_cdc::cdc(&settings.data_dir.join("bench-cdc"), rows, url).await?;
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
