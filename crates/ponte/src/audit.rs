//! `ponte audit`: the operator's tools over the audit log (docs/operations.md, "Audit log").
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use ponte_audit::{AuditConfig, Keys, Signer, decode_key, encode_key};
use ponte_bus::{KafkaConfig, Topic, TopicsConfig};
use ponte_proto::audit::v1::{AuditEntry, audit_entry::Body, read::Subject};
use prost::Message as _;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Walk the audit topic and check every writer's chain: links, sequence numbers, seals and
    /// their keys. Prints every problem with its position; exits 1 when there is one.
    Verify {
        /// Another topic than the deployment's `<prefix>audit.v1` (a copy, a test).
        #[arg(long)]
        topic: Option<String>,
        /// A public key besides `[audit.keys]`: `<key id>=<base64>` (repeatable).
        #[arg(long = "public-key")]
        keys: Vec<String>,
    },
    /// Every read of a person recorded in the audit log: when, by which principal, which RPC,
    /// how many views it returned, and where the entry is. Needs `audit.subject_key_file`
    /// (only who holds it can find a person in the log). Reads of whole municipalities
    /// (ListPersons, GetIndicators) and change streams are recorded by municipality or as
    /// streams, not by person, and are not listed here.
    WhoRead {
        /// The person's NIS.
        nis: String,
        /// Another topic than the deployment's `<prefix>audit.v1`.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Which request brought a record: every accepted write of record id `record_id` in the
    /// audit log, with its principal, endpoint, request id (the `x-request-id` its sender was
    /// answered) and time. Needs `audit.subject_key_file`.
    Trace {
        record_id: String,
        /// Another topic than the deployment's `<prefix>audit.v1`.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Write a new Ed25519 signing key for a service's audit chain (PKCS#8, readable by its
    /// owner only) and print the `[audit.keys]` line that lets verify check its seals.
    Keygen {
        /// The key's id, e.g. `reconciler-1`.
        #[arg(long)]
        key_id: String,
        /// Where to write the private key (refused when the file exists).
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) async fn run(
    command: AuditCommand,
    audit: &AuditConfig,
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
) -> anyhow::Result<bool> {
    match command {
        AuditCommand::Verify { topic, keys } => {
            let mut known: Keys = audit.keys().context("[audit.keys]")?;
            for k in &keys {
                let (id, b64) = k
                    .split_once('=')
                    .with_context(|| format!("--public-key {k:?}: expected <key id>=<base64>"))?;
                known.insert(id, decode_key(id, b64)?)?;
            }
            let topic = topic.unwrap_or_else(|| topics.name(Topic::Audit));
            let (k, t) = (kafka.clone(), topic.clone());
            let report =
                tokio::task::spawn_blocking(move || ponte_audit::log::verify_topic(&k, &t, known))
                    .await??;
            for p in &report.problems {
                println!("{p}");
            }
            for (writer, n) in &report.unsealed {
                println!(
                    "note: writer {writer}: its last {n} entr{} not sealed yet",
                    if *n == 1 { "y is" } else { "ies are" }
                );
            }
            println!(
                "{topic}: {} entries from {} writers, {} seals, {} problems",
                report.entries,
                report.writers,
                report.seals,
                report.problems.len()
            );
            Ok(report.problems.is_empty())
        }
        AuditCommand::WhoRead { nis, topic } => {
            let nis = ponte_domain::ids::Nis::parse(&nis).context("nis")?;
            let subjects = subject_key(audit)?;
            let wanted = subjects.hash("nis", nis.as_str());
            let topic = topic.unwrap_or_else(|| topics.name(Topic::Audit));
            let found = find(kafka, &topic, move |e| match &e.body {
                Some(Body::Read(r)) if r.subject == Some(Subject::Person(wanted.clone())) => {
                    Some(format!(
                        "{} read by {} ({}, {} returned)",
                        time(e),
                        r.principal,
                        r.rpc,
                        r.returned
                    ))
                }
                _ => None,
            })
            .await?;
            println!("{} reads of {} in {topic}", found, nis.masked());
            Ok(true)
        }
        AuditCommand::Trace { record_id, topic } => {
            let subjects = subject_key(audit)?;
            let wanted = subjects.hash("record", &record_id);
            let topic = topic.unwrap_or_else(|| topics.name(Topic::Audit));
            let found = find(kafka, &topic, move |e| match &e.body {
                Some(Body::Write(w)) if w.record_ids.contains(&wanted) => Some(format!(
                    "{} sent by {} to {} in request {} ({} accepted, {} rejected)",
                    time(e),
                    w.principal,
                    w.endpoint,
                    w.request_id,
                    w.accepted,
                    w.rejected
                )),
                _ => None,
            })
            .await?;
            println!("{found} writes of the record in {topic}");
            Ok(true)
        }
        AuditCommand::Keygen { key_id, out } => {
            let pkcs8 = Signer::generate()?;
            let signer = Signer::from_pkcs8(&key_id, &pkcs8)?;
            write_private(&out, &pkcs8)?;
            println!("wrote {}", out.display());
            println!("[audit.keys]");
            println!("{key_id:?} = {:?}", encode_key(&signer.public_key()));
            Ok(true)
        }
    }
}

/// The key identifiers are hashed under in the log.
fn subject_key(audit: &AuditConfig) -> anyhow::Result<ponte_audit::SubjectKey> {
    anyhow::ensure!(
        !audit.subject_key_file.is_empty(),
        "audit.subject_key_file is not set: only who holds the subject key can find a person or a record in the log"
    );
    let secret = std::fs::read(&audit.subject_key_file)
        .with_context(|| format!("reading {}", audit.subject_key_file))?;
    Ok(ponte_audit::SubjectKey::new(&secret)?)
}

/// Prints `line(entry)` for every entry of `topic` it answers for, with the entry's position;
/// returns how many it printed.
async fn find(
    kafka: &KafkaConfig,
    topic: &str,
    line: impl Fn(&AuditEntry) -> Option<String> + Send + 'static,
) -> anyhow::Result<usize> {
    let (k, t) = (kafka.clone(), topic.to_owned());
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        ponte_audit::log::scan_topic(&k, &t, |position, bytes| {
            if let Ok(e) = AuditEntry::decode(bytes)
                && let Some(l) = line(&e)
            {
                out.push(format!(
                    "{l}  [{position}, writer {} sequence {}]",
                    e.writer, e.seq
                ));
            }
        })
        .map(|()| out)
    })
    .await??;
    for l in &lines {
        println!("{l}");
    }
    Ok(lines.len())
}

/// An entry's time, RFC 3339 in UTC, to the second.
fn time(e: &AuditEntry) -> String {
    e.time
        .as_ref()
        .and_then(|t| {
            let day = ponte_domain::period::Date::from_days(t.seconds.div_euclid(86_400)).ok()?;
            let s = t.seconds.rem_euclid(86_400);
            Some(format!(
                "{day}T{:02}:{:02}:{:02}Z",
                s / 3600,
                s % 3600 / 60,
                s % 60
            ))
        })
        .unwrap_or_else(|| "(no time)".to_owned())
}

/// Creates `path` with `bytes`, readable and writable by its owner only; refuses to overwrite.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
