//! `ponte`: one binary, a subcommand per service and per operator tool. It only wires the
//! library crates together: configuration, telemetry and shutdown from `ponte-runtime`, the
//! services from their crates.

/// mimalloc instead of glibc's allocator: the reconciler allocates and frees many small
/// buffers per event (decoded records, views, keys), and with glibc's allocator that was about
/// a third of its time (docs/benchmarks.md, "Where the time goes"). The C and C++ libraries
/// (RocksDB, librdkafka) allocate through it too: the `override` feature (workspace
/// `Cargo.toml`) makes the binary define `malloc` and `free`. Built without asking the kernel
/// for transparent huge pages (the `no_thp` feature): zeroing a fresh 2 MiB page on first
/// touch was a fifth of an adapter's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ponte_bus::topics::TopicAction;
use ponte_bus::{KafkaConfig, TopicsConfig};
use ponte_runtime::telemetry::{LogConfig, init_logging, init_metrics};
use ponte_runtime::{Readiness, serve_admin, shutdown_token};
use serde::Deserialize;

mod audit;
mod client;
mod erase;
mod ingest;
mod sim;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Parser)]
#[command(
    name = "ponte",
    version,
    about = "Ponte: the interoperability hub for conditional cash transfer programmes"
)]
struct Cli {
    /// TOML file layered over the built-in defaults (then PONTE__* variables over both).
    #[arg(long, global = true, env = "PONTE_CONFIG")]
    config: Option<PathBuf>,
    /// Credentials of `ponte query`, `ponte ingest` and `ponte erase`.
    #[command(flatten)]
    client: client::ClientCreds,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the education adapter: HTTP ingest of monthly school attendance.
    EducationAdapter,
    /// Run the health adapter: FHIR R4 bundles and a simple JSON form over HTTP, and optional
    /// polling of a FHIR server's search API.
    HealthAdapter,
    /// Run the assistance adapter (specific conditionalities): registry person profiles, SCFV
    /// attendance, family follow-up and appeals over HTTP.
    AssistanceAdapter,
    /// Run the reconciler: consume the sector topics, keep the view, serve gRPC.
    Reconciler,
    /// Manage the topic catalogue.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Query a running reconciler over gRPC.
    Query {
        /// gRPC address of the reconciler: `https://` for TLS (with --ca), `http://` for an
        /// insecure one.
        #[arg(long, default_value = "https://localhost:50051")]
        addr: String,
        #[command(subcommand)]
        command: QueryCommand,
    },
    /// Print the effective configuration (defaults, file and environment merged).
    Config,
    /// Send a file (CSV, JSON…) to a running adapter, with a progress bar and a summary;
    /// retries on 503 honouring Retry-After.
    Ingest(ingest::IngestArgs),
    /// Write a deterministic synthetic population's sector records to files, in the adapters'
    /// input formats (for demos and benchmarks; send them with `ponte ingest`).
    Sim(sim::SimArgs),
    /// Erase a person everywhere Ponte keeps them (LGPD): sends the order to the assistance
    /// adapter (`POST /v1/erasures`); the principal needs the `erasure` grant.
    Erase(erase::EraseArgs),
    /// The audit log: verify its chains, make signing keys.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Certificates and keys.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Write a development PKI: a local CA, a server certificate for localhost, a client
    /// certificate per sector system, sample query clients and an operator, a JWKS with its
    /// token-signing key, and a matching access policy. Never for a real deployment.
    Dev {
        /// Output directory (created; refused when not empty unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite the files it writes in a non-empty directory.
        #[arg(long)]
        force: bool,
    },
    /// Print a bearer token (JWT) for a principal, signed with a development PKI's token key
    /// (the issuer and audience of the `ponte.toml` that `pki dev` wrote).
    DevToken {
        /// The development PKI's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The principal (`urn:ponte:principal:federal`, or just `federal`).
        #[arg(long)]
        principal: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Audience (default: the development audience `urn:ponte:api`).
        #[arg(long)]
        audience: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create missing topics and correct drifted settings; running it twice changes nothing.
    Ensure,
    /// List the catalogue: names, keys, partitions, cleanup policy.
    List,
}

#[derive(Debug, Subcommand)]
enum QueryCommand {
    /// One person's view: records, outcomes with evidence.
    Person { nis: String },
    /// One family's view: members and effects.
    Family { family_id: String },
    /// Health records waiting for their CNS/CPF to appear in the registry's crosswalk.
    Parked {
        /// Most records listed.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Follow-up and compliance indicators of a municipality.
    Indicators {
        /// IBGE municipality code.
        municipality: String,
        /// Only this period (`2025-B2`, `2025-S1`).
        #[arg(long, default_value = "")]
        period: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    log: LogConfig,
    kafka: KafkaConfig,
    topics: TopicsConfig,
    education_adapter: ponte_adapter_education::EducationAdapterConfig,
    health_adapter: ponte_adapter_health::HealthAdapterConfig,
    assistance_adapter: ponte_adapter_assistance::AssistanceAdapterConfig,
    reconciler: ponte_reconciler::ReconcilerConfig,
    tls: ponte_edge::TlsConfig,
    access: ponte_edge::AccessConfig,
    audit: ponte_audit::AuditConfig,
}

fn load_config(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(ponte_runtime::load(DEFAULTS, file, std::env::vars())?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = load_config(cli.config.as_deref())?;
    init_logging(&cfg.log);
    match cli.command {
        Command::EducationAdapter => {
            let (readiness, shutdown) = start_admin(&cfg.education_adapter.admin_listen).await?;
            ponte_adapter_education::run(
                &cfg.education_adapter,
                &cfg.kafka,
                &cfg.topics,
                &cfg.tls,
                &cfg.access,
                &cfg.audit,
                readiness,
                shutdown,
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("education adapter")?;
        }
        Command::HealthAdapter => {
            let (readiness, shutdown) = start_admin(&cfg.health_adapter.admin_listen).await?;
            ponte_adapter_health::run(
                &cfg.health_adapter,
                &cfg.kafka,
                &cfg.topics,
                &cfg.tls,
                &cfg.access,
                &cfg.audit,
                readiness,
                shutdown,
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("health adapter")?;
        }
        Command::AssistanceAdapter => {
            let (readiness, shutdown) = start_admin(&cfg.assistance_adapter.admin_listen).await?;
            ponte_adapter_assistance::run(
                &cfg.assistance_adapter,
                &cfg.kafka,
                &cfg.topics,
                &cfg.tls,
                &cfg.access,
                &cfg.audit,
                readiness,
                shutdown,
            )
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("assistance adapter")?;
        }
        Command::Reconciler => {
            let (readiness, shutdown) = start_admin(&cfg.reconciler.admin_listen).await?;
            ponte_reconciler::run(
                &cfg.reconciler,
                &cfg.kafka,
                &cfg.topics,
                &cfg.tls,
                &cfg.access,
                &cfg.audit,
                readiness,
                shutdown,
            )
            .await
            .context("reconciler")?;
        }
        Command::Topics {
            command: TopicsCommand::Ensure,
        } => topics_ensure(&cfg).await?,
        Command::Topics {
            command: TopicsCommand::List,
        } => {
            let mut specs = cfg.topics.catalogue()?;
            specs.extend(
                cfg.topics
                    .reconciler_catalogue(&cfg.reconciler.group_id, cfg.topics.partitions)?,
            );
            for spec in specs {
                println!(
                    "{:<52} key={:<16} partitions={:<3} replication={} {}",
                    spec.name,
                    spec.topic.key(),
                    spec.partitions,
                    spec.replication_factor,
                    spec.configs
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        Command::Query { addr, command } => query(&addr, &cli.client, command).await?,
        Command::Config => println!("{:#?}", redacted(cfg)),
        Command::Audit { command } => {
            if !audit::run(command, &cfg.audit, &cfg.kafka, &cfg.topics).await? {
                std::process::exit(1);
            }
        }
        Command::Ingest(args) => {
            // The sector's configured listen address gives the default endpoint.
            let listen = Some(match args.sector {
                ingest::Sector::Education => cfg.education_adapter.listen.clone(),
                ingest::Sector::Health => cfg.health_adapter.listen.clone(),
                ingest::Sector::Assistance => cfg.assistance_adapter.listen.clone(),
            });
            if !ingest::run(args, listen.as_deref(), &cli.client).await? {
                std::process::exit(1);
            }
        }
        Command::Erase(args) => {
            if !erase::run(args, &cfg.assistance_adapter.listen, &cli.client).await? {
                std::process::exit(1);
            }
        }
        Command::Sim(args) => sim::run(args)?,
        Command::Pki {
            command: PkiCommand::Dev { out, force },
        } => pki_dev(&out, force)?,
        Command::Pki {
            command:
                PkiCommand::DevToken {
                    dir,
                    principal,
                    ttl_secs,
                    audience,
                },
        } => {
            use ponte_access::token::dev;
            let key = std::fs::read_to_string(dir.join("token-signing-key.pem"))
                .with_context(|| format!("{}/token-signing-key.pem", dir.display()))?;
            let signer = dev::DevSigner::from_pkcs8_pem(dev::DEV_KID, &key)?;
            let principal = if principal.contains(':') {
                principal
            } else {
                ponte_access::pki::principal_uri(&principal)
            };
            println!(
                "{}",
                signer.sign_for(
                    &principal,
                    dev::DEV_ISSUER,
                    audience.as_deref().unwrap_or(dev::DEV_AUDIENCE),
                    Duration::from_secs(ttl_secs),
                )?
            );
        }
    }
    Ok(())
}

fn pki_dev(out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let pki = ponte_access::pki::generate_dev(out, force)?;
    println!(
        "development PKI in {} — never for a real deployment",
        pki.dir.display()
    );
    println!("  CA bundle        {}", pki.ca.cert.display());
    println!(
        "  server           {} ({}), valid until {}",
        pki.server.cert.display(),
        pki.server_names.join(", "),
        pki.leaf_not_after.date()
    );
    for c in &pki.clients {
        println!(
            "  {:<22} {}  {}",
            c.spec.name,
            c.files.cert.display(),
            c.principal.as_str()
        );
    }
    println!("  JWKS             {}", pki.jwks.display());
    println!("  token key        {}", pki.token_signing_key.display());
    println!("  access policy    {}", pki.policy.display());
    let audit = ponte_audit::write_dev_keys(&pki.dir.join("audit"))?;
    println!(
        "  audit keys       {} (a signing key per service, the subject key)",
        audit.key_dir.display()
    );
    let config = pki.dir.join("ponte.toml");
    std::fs::write(&config, dev_config_toml(&pki, &audit))
        .with_context(|| format!("writing {}", config.display()))?;
    println!(
        "  Ponte config     {}  (PONTE_CONFIG=<it> ponte <service>)",
        config.display()
    );
    Ok(())
}

/// The `[tls]`, `[access]`, `[audit]` and `[reconciler.peer]` sections for services using the
/// development PKI: TLS with the dev server certificate, client certificates checked against
/// the dev CA (optional, so that a caller may use a bearer token instead), tokens from the dev
/// issuer, the dev policy, the audit log signed with the dev keys, and the reconciler's
/// certificate for reads across instances (each instance then sets only its `advertise`).
fn dev_config_toml(
    pki: &ponte_access::pki::DevPkiManifest,
    audit: &ponte_audit::DevKeys,
) -> String {
    use ponte_access::token::dev;
    // Absolute paths, so the file works from any directory. TOML basic strings: escape.
    let path = |p: &std::path::Path| {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        toml_string(&abs.display().to_string())
    };
    let peer = pki
        .clients
        .iter()
        .find(|c| c.spec.kind == ponte_access::pki::ClientKind::Peer)
        .map_or_else(String::new, |c| {
            format!(
                "\n[reconciler.peer]\nca_file = {}\ncert_file = {}\nkey_file = {}\n",
                path(&pki.ca.cert),
                path(&c.files.cert),
                path(&c.files.key)
            )
        });
    format!(
        "# Written by `ponte pki dev`: TLS and authentication with the development PKI in this\n\
         # directory. Never for a real deployment (docs/security.md).\n\
         [tls]\n\
         cert_file = {}\n\
         key_file = {}\n\
         client_ca_file = {}\n\
         client_auth = \"optional\"\n\
         \n\
         [access]\n\
         policy_file = {}\n\
         \n\
         [access.tokens]\n\
         jwks_file = {}\n\
         issuer = {}\n\
         audience = {}\n\
         \n\
         [audit]\n\
         key_dir = {}\n\
         subject_key_file = {}\n\
         \n\
         [audit.keys]\n\
         {}",
        path(&pki.server.cert),
        path(&pki.server.key),
        path(&pki.ca.cert),
        path(&pki.policy),
        path(&pki.jwks),
        toml_string(dev::DEV_ISSUER),
        toml_string(dev::DEV_AUDIENCE),
        path(&audit.key_dir),
        path(&audit.subject_key_file),
        audit
            .public
            .iter()
            .map(|(id, key)| format!("{id} = {}\n", toml_string(key)))
            .collect::<String>(),
    ) + &peer
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What `ponte config` prints: the configuration with every secret replaced (Kafka passwords
/// and secrets among the pass-through properties, the pull mode's Authorization header).
fn redacted(mut cfg: Config) -> Config {
    const REDACTED: &str = "<redacted>";
    for (key, value) in cfg.kafka.properties.iter_mut() {
        let k = key.to_ascii_lowercase();
        if [
            "password",
            "secret",
            "token",
            "credential",
            "sasl.jaas.config",
        ]
        .iter()
        .any(|s| k.contains(s))
            || k.ends_with(".pem")
        {
            *value = REDACTED.to_owned();
        }
    }
    if !cfg.health_adapter.pull.authorization.is_empty() {
        cfg.health_adapter.pull.authorization = REDACTED.to_owned();
    }
    cfg
}

async fn start_admin(
    addr: &str,
) -> anyhow::Result<(Readiness, tokio_util::sync::CancellationToken)> {
    let prometheus = init_metrics()?;
    let readiness = Readiness::default();
    let shutdown = shutdown_token();
    serve_admin(addr, prometheus, readiness.clone(), shutdown.clone()).await?;
    Ok((readiness, shutdown))
}

async fn topics_ensure(cfg: &Config) -> anyhow::Result<()> {
    let mut specs = cfg.topics.catalogue()?;
    // The configured reconciler group's own topics (each group has its own; a reconciler also
    // ensures them when it starts).
    specs.extend(
        cfg.topics
            .reconciler_catalogue(&cfg.reconciler.group_id, cfg.topics.partitions)?,
    );
    let reports = ponte_bus::topics::ensure_specs(&cfg.kafka, specs, Duration::from_secs(30))
        .await
        .context("ensuring topics")?;
    let mut changed = 0;
    for r in &reports {
        let what = match &r.action {
            TopicAction::Created => {
                changed += 1;
                "created".to_owned()
            }
            TopicAction::Unchanged => "unchanged".to_owned(),
            TopicAction::ConfigsUpdated(d) => {
                changed += 1;
                format!("updated ({})", d.join(", "))
            }
        };
        println!("{:<40} {}", r.spec.name, what);
        for w in &r.warnings {
            println!("{:<40} warning: {w}", "");
        }
    }
    println!("{} topics, {changed} changed", reports.len());
    Ok(())
}

async fn query(
    addr: &str,
    creds: &client::ClientCreds,
    command: QueryCommand,
) -> anyhow::Result<()> {
    use ponte_proto::compliance::v1::GetPersonRequest;
    use ponte_proto::compliance::v1::compliance_service_client::ComplianceServiceClient;
    let (channel, auth) = creds.grpc(addr).await?;
    let mut client =
        ComplianceServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(v) = &auth {
                req.metadata_mut().insert("authorization", v.clone());
            }
            Ok(req)
        });
    match command {
        QueryCommand::Person { nis } => {
            let resp = client
                .get_person(GetPersonRequest { nis })
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
            println!("{:#?}", resp.into_inner().person);
        }
        QueryCommand::Family { family_id } => {
            let resp = client
                .get_family(ponte_proto::compliance::v1::GetFamilyRequest { family_id })
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
            println!("{:#?}", resp.into_inner().family);
        }
        QueryCommand::Parked { limit } => {
            let resp = client
                .list_parked(ponte_proto::compliance::v1::ListParkedRequest { limit })
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            for p in &resp.parked {
                println!(
                    "{:<24} {:<40} version {}",
                    p.identifier, p.record_id, p.version
                );
            }
            println!("{} parked ({} listed)", resp.total, resp.parked.len());
        }
        QueryCommand::Indicators {
            municipality,
            period,
        } => {
            let resp = client
                .get_indicators(ponte_proto::compliance::v1::GetIndicatorsRequest {
                    municipality,
                    period,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            println!(
                "{:<14} {:<8} {:>8} {:>8} {:>9} {:>13} {:>9} {:>10}",
                "conditionality",
                "period",
                "public",
                "followed",
                "compliant",
                "non-compliant",
                "follow-up",
                "compliance"
            );
            for r in &resp.rows {
                println!(
                    "{:<14} {:<8} {:>8} {:>8} {:>9} {:>13} {:>8.1}% {:>9.1}%",
                    r.conditionality,
                    r.period,
                    r.public,
                    r.followed,
                    r.compliant,
                    r.non_compliant,
                    r.follow_up_rate * 100.0,
                    r.compliance_rate * 100.0
                );
            }
            for r in &resp.follow_up_rates {
                println!("{} ({}): {:.1}%", r.name, r.period, r.rate * 100.0);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_redacts_secrets_and_keeps_the_rest() {
        let env = [
            ("PONTE__KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
            (
                "PONTE__HEALTH_ADAPTER__PULL__AUTHORIZATION",
                "Bearer abc.def",
            ),
        ];
        let mut cfg: Config = ponte_runtime::load(
            DEFAULTS,
            None,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .unwrap();
        cfg.kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        cfg.kafka
            .properties
            .insert("ssl.key.password".into(), "s3cret".into());
        cfg.kafka
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let text = format!("{:#?}", redacted(cfg));
        for secret in ["hunter2", "s3cret", "abc.def"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("SASL_SSL"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
