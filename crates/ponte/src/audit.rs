//! `ponte audit`: the operator's tools over the audit log (docs/operations.md, "Audit log").
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use ponte_audit::{AuditConfig, Keys, Signer, decode_key, encode_key};
use ponte_bus::{KafkaConfig, Topic, TopicsConfig};

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
