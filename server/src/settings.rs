//! Typed settings, layered: defaults < config file < `KEYSTONE_*` environment variables.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Address and port to listen on (`KEYSTONE_LISTEN`).
    pub listen: String,
    /// Where the embedded database and other local state live (`KEYSTONE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...` (`KEYSTONE_DATABASE_URL`); defaults to a SQLite file in
    /// the data directory. May hold a password: it is never logged.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Built browser assets (`/pkg/...`), produced by `cargo xtask build`.
    pub site_root: PathBuf,
    /// Mark the session cookie `Secure`; turn on whenever the console is served over HTTPS,
    /// directly or behind a proxy (`KEYSTONE_SECURE_COOKIES`).
    pub secure_cookies: bool,
    /// A session unused this long ends (`KEYSTONE_SESSION_IDLE_MINUTES`).
    pub session_idle_minutes: i64,
    /// A session ends this long after sign-in, however active (`KEYSTONE_SESSION_ABSOLUTE_HOURS`).
    pub session_absolute_hours: i64,
    /// The origin browsers use to reach the console (e.g. `https://keystone.example.com`) when a
    /// proxy rewrites the Host header; state-changing requests from any other origin are refused.
    #[serde(default)]
    pub public_origin: Option<String>,
    /// Largest request body the ingest proxy accepts; 413 beyond (`KEYSTONE_INGEST_MAX_BODY_BYTES`).
    pub ingest_max_body_bytes: usize,
    /// Largest single event; rejected by index beyond (`KEYSTONE_INGEST_MAX_EVENT_BYTES`).
    pub ingest_max_event_bytes: usize,
    /// Most events one ingest request may hold; 413 beyond (`KEYSTONE_INGEST_MAX_EVENTS_PER_REQUEST`).
    #[serde(default = "ten_thousand")]
    pub ingest_max_events_per_request: usize,
    /// The ingest quota of a stream that declares none, in events per second (bursts of two
    /// seconds' worth; 429 with Retry-After beyond), so one producer cannot fill the disk or
    /// starve the others (`KEYSTONE_INGEST_DEFAULT_MAX_EVENTS_PER_SECOND`; 0 for none).
    #[serde(default = "default_stream_quota")]
    pub ingest_default_max_events_per_second: u32,
    /// Largest request body a console form (server function) accepts; 413 beyond
    /// (`KEYSTONE_CONSOLE_MAX_BODY_BYTES`).
    #[serde(default = "sixty_four_kib")]
    pub console_max_body_bytes: usize,
    /// A request not answered within this is answered 408 (`KEYSTONE_REQUEST_TIMEOUT_MS`).
    #[serde(default = "thirty_seconds")]
    pub request_timeout_ms: u64,
    /// A request body that sends nothing for this long is cut off (`KEYSTONE_BODY_IDLE_TIMEOUT_MS`).
    #[serde(default = "ten_seconds")]
    pub body_idle_timeout_ms: u64,
    /// The header a trusted reverse proxy sets to the client's address (e.g. `X-Forwarded-For`;
    /// its last entry counts), for sign-in throttling per address (`KEYSTONE_TRUSTED_PROXY_HEADER`).
    /// Set it only behind such a proxy: otherwise clients choose their own address.
    #[serde(default)]
    pub trusted_proxy_header: Option<String>,
    /// Requests served at once; the rest get 503 at once rather than queue
    /// (`KEYSTONE_MAX_CONCURRENT_REQUESTS`).
    #[serde(default = "max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Open connections at once; beyond, new ones wait in the kernel's backlog until one closes
    /// (`KEYSTONE_MAX_CONNECTIONS`).
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// A connection that has not sent a request's complete headers within this is closed
    /// (slow clients cannot hold connections; `KEYSTONE_HEADER_READ_TIMEOUT_MS`).
    #[serde(default = "ten_seconds")]
    pub header_read_timeout_ms: u64,
    /// How often job telemetry is sampled, stored for the dashboards and published at `/metrics`
    /// (`KEYSTONE_TELEMETRY_INTERVAL_MS`).
    pub telemetry_interval_ms: u64,
    /// A bearer token that may scrape all of `/metrics`, platform series included
    /// (`KEYSTONE_METRICS_TOKEN`, at least 32 characters; never logged). Without it, API tokens
    /// scrape their teams' series only.
    #[serde(default)]
    pub metrics_token: Option<String>,
    /// This process's name among processes sharing the database (`KEYSTONE_INSTANCE`); defaults
    /// to the host name and the data directory.
    #[serde(default)]
    pub instance: Option<String>,
    /// How long the reconciler lease lasts unless renewed (`KEYSTONE_RECONCILER_LEASE_MS`, at least
    /// 2000): with several processes on one database, the most a failover waits.
    pub reconciler_lease_ms: u64,
    /// Streams on a Kafka cluster instead of the embedded log: a `[kafka]` table in the config
    /// file, or `KEYSTONE_KAFKA__BROKERS` (and `__MANAGE_TOPICS`, `__REPLICATION_FACTOR`).
    #[serde(default)]
    pub kafka: Option<KafkaSettings>,
    /// What this process does among those sharing the database (`KEYSTONE_ROLE`, or `keystone
    /// serve --role`; `keystone worker` is the worker role).
    #[serde(default)]
    pub role: ProcessRole,
    /// The worker pool of a `keystone worker` (`KEYSTONE_POOL`, or `--pool`): it runs the routes
    /// whose `job.pool` names it; without one, the routes without a pool.
    #[serde(default)]
    pub pool: Option<String>,
    /// The environment layer of every job's configuration, from `KEYSTONE_JOB_<KEY>` variables
    /// (e.g. `KEYSTONE_JOB_STALL_TIMEOUT_S=300`): key -> value, checked at start-up.
    #[serde(skip)]
    pub job_env: BTreeMap<String, String>,
    /// Where sinks and alert webhooks may connect (`[egress]`, or `KEYSTONE_EGRESS__ALLOW`,
    /// `__DENY` as comma-separated lists and `__ALLOW_PRIVATE`).
    #[serde(default)]
    pub egress: EgressSettings,
    /// The key sealing sink secrets in the database (`KEYSTONE_SECRETS_KEY`: 64 hex characters,
    /// e.g. `openssl rand -hex 32`; never logged). Required with PostgreSQL, where every process
    /// must share it; on the embedded database it defaults to one generated into
    /// `<data_dir>/secrets.key`.
    #[serde(default)]
    pub secrets_key: Option<String>,
}

/// The egress policy's settings (see `keystone_control::egress`). Loopback, link-local (the
/// cloud metadata service), private ranges and the platform's own database and brokers are
/// refused unless listed in `allow`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EgressSettings {
    /// Networks (`10.1.0.0/16`, `127.0.0.1`) and host names (`search.internal`, `*.internal`)
    /// sinks may reach even though the defaults refuse them.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Networks and host names sinks may never reach; checked first.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Let sinks reach private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7).
    #[serde(default)]
    pub allow_private: bool,
}

pub use keystone_ops::ProcessRole;

/// How to reach a Kafka cluster (any Apache Kafka protocol broker).
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Create topics and set partitions and retention from the goal state; off when a platform
    /// team owns the topics (they must then exist with the declared partitions).
    #[serde(default = "yes")]
    pub manage_topics: bool,
    /// Replication factor of created topics (with `min.insync.replicas=2` on the cluster).
    #[serde(default = "three")]
    pub replication_factor: i32,
    /// Further librdkafka properties for every client, e.g. `security.protocol`,
    /// `sasl.mechanisms`, `sasl.username` (config file only: they may hold secrets).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long a worker may go silent before the group hands its partitions to the others
    /// (`session.timeout.ms`): the longest a dead worker's partitions wait.
    #[serde(default = "ten_seconds")]
    pub session_timeout_ms: u64,
}

fn default_stream_quota() -> u32 {
    100_000
}

fn sixty_four_kib() -> usize {
    64 << 10
}

fn thirty_seconds() -> u64 {
    30_000
}

fn max_concurrent_requests() -> usize {
    1024
}

fn max_connections() -> usize {
    2048
}

fn ten_thousand() -> usize {
    10_000
}

fn ten_seconds() -> u64 {
    10_000
}

fn yes() -> bool {
    true
}

fn three() -> i32 {
    3
}

impl KafkaSettings {
    /// The log's configuration in a process of `role`: only the control plane creates and
    /// changes topics; other processes check that they exist.
    pub fn log_config(&self, role: ProcessRole) -> keystone_engine::log::KafkaConfig {
        let mut c = keystone_engine::log::KafkaConfig::new(self.brokers.clone());
        c.manage_topics = self.manage_topics && role.controls();
        c.replication_factor = self.replication_factor;
        c.properties = self.properties.clone();
        c
    }
}

impl Settings {
    /// Loads the layers. `file` is the config file (`KEYSTONE_CONFIG`, else `keystone.toml` if
    /// present in the working directory).
    pub fn load(file: Option<PathBuf>) -> Result<Settings, config::ConfigError> {
        let file = file.or_else(|| std::env::var_os("KEYSTONE_CONFIG").map(PathBuf::from));
        let mut builder = config::Config::builder()
            .set_default("listen", "127.0.0.1:3000")?
            .set_default("data_dir", "data")?
            .set_default("site_root", "target/site")?
            .set_default("secure_cookies", false)?
            .set_default("session_idle_minutes", 60)?
            .set_default("session_absolute_hours", 12)?
            .set_default("ingest_max_body_bytes", 5 << 20)?
            .set_default("ingest_max_event_bytes", 1 << 20)?
            .set_default("telemetry_interval_ms", 10_000)?
            .set_default("reconciler_lease_ms", 10_000)?;
        builder = match file {
            Some(path) => builder.add_source(config::File::from(path).required(true)),
            None => builder.add_source(config::File::with_name("keystone.toml").required(false)),
        };
        let mut settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("KEYSTONE")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("egress.allow")
                    .with_list_parse_key("egress.deny"),
            )
            .build()?
            .try_deserialize()?;
        settings.job_env = keystone_control::config::env_layer(std::env::vars())
            .map_err(|e| config::ConfigError::Message(format!("job configuration: {e}")))?;
        Ok(settings)
    }

    /// The defaults, with everything local under `dir` (benchmarks build their servers so).
    pub fn local(dir: &std::path::Path) -> Settings {
        Settings {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.to_path_buf(),
            database_url: Some(format!("sqlite://{}", dir.join("keystone.db").display())),
            site_root: dir.join("site"),
            secure_cookies: false,
            session_idle_minutes: 60,
            session_absolute_hours: 12,
            public_origin: None,
            ingest_max_body_bytes: 16 << 20,
            ingest_max_event_bytes: 64 << 10,
            ingest_max_events_per_request: 10_000,
            ingest_default_max_events_per_second: default_stream_quota(),
            console_max_body_bytes: sixty_four_kib(),
            request_timeout_ms: thirty_seconds(),
            body_idle_timeout_ms: ten_seconds(),
            max_concurrent_requests: max_concurrent_requests(),
            max_connections: max_connections(),
            header_read_timeout_ms: ten_seconds(),
            trusted_proxy_header: None,
            telemetry_interval_ms: 10_000,
            metrics_token: None,
            instance: None,
            reconciler_lease_ms: 10_000,
            kafka: None,
            role: ProcessRole::All,
            pool: None,
            job_env: Default::default(),
            egress: EgressSettings::default(),
            secrets_key: None,
        }
    }

    /// The key sealing sink secrets: the configured one; on the embedded database, the one kept
    /// in the data directory (made on first start, readable by its owner only). A production
    /// database without a configured key is a start-up error, not a silent plaintext store.
    pub fn secret_box(&self) -> anyhow::Result<keystone_control::secret_box::SecretBox> {
        use keystone_control::secret_box::SecretBox;
        if let Some(key) = self.secrets_key.as_deref().filter(|k| !k.is_empty()) {
            return SecretBox::from_hex(key).map_err(|e| anyhow::anyhow!("KEYSTONE_SECRETS_KEY: {e}"));
        }
        if !self.database_url().starts_with("sqlite:") {
            anyhow::bail!(
                "KEYSTONE_SECRETS_KEY is required with PostgreSQL: sink secrets are sealed with it, and every \
                 process sharing the database needs the same one (64 hex characters, e.g. `openssl rand -hex 32`)"
            );
        }
        let path = self.data_dir.join("secrets.key");
        let key = match std::fs::read_to_string(&path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::create_dir_all(&self.data_dir)?;
                let key = SecretBox::generate_hex();
                let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                f.write_all(key.as_bytes())?;
                f.sync_all()?;
                key
            }
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        SecretBox::from_hex(&key).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The egress policy of these settings, protecting the platform's own database and
    /// brokers (resolved now).
    pub fn egress_policy(&self) -> anyhow::Result<keystone_control::egress::EgressPolicy> {
        use std::net::ToSocketAddrs;
        let e = &self.egress;
        let policy = keystone_control::egress::EgressPolicy::new(&e.allow, &e.deny, e.allow_private)
            .map_err(anyhow::Error::msg)?;
        let mut own: Vec<(String, u16)> = Vec::new();
        if let Some(u) = self.database_url.as_deref().and_then(|u| url::Url::parse(u).ok()) {
            if let Some(host) = u.host_str().filter(|_| u.scheme().starts_with("postgres")) {
                own.push((host.trim_matches(['[', ']']).to_owned(), u.port().unwrap_or(5432)));
            }
        }
        for hp in self.kafka.iter().flat_map(|k| k.brokers.split(',')) {
            if let Some((h, p)) = hp.trim().rsplit_once(':') {
                own.push((h.trim_matches(['[', ']']).to_owned(), p.parse().unwrap_or(9092)));
            }
        }
        let addrs = own.iter().filter_map(|(h, p)| (h.as_str(), *p).to_socket_addrs().ok()).flatten();
        Ok(policy.protecting(addrs.collect::<Vec<_>>()))
    }

    /// The database URL in effect: the configured one, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("keystone.db").display()))
    }
}
