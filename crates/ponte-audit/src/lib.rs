//! Ponte's tamper-evident audit log (`proto/ponte/audit/v1`): hash chains per writer, sealed
//! with Ed25519, and the verification that walks them.
//!
//! - [`Chain`] numbers a writer's entries and links each to the SHA-256 of the one before.
//! - [`Signer`] seals a chain: an Ed25519 signature over the writer, the seal's sequence
//!   number and the hash of everything before it, so an entry forged by someone without the
//!   key — inserted, appended or changed with its links recomputed — breaks the next seal.
//! - [`SubjectKey`] turns identifiers (a NIS, a family id, a record id) into keyed hashes
//!   (HMAC-SHA-256): the audit never holds them in clear, and who holds the key can still
//!   find every entry about a person.
//! - [`Verifier`] checks entries in the order the topic holds them and reports each problem
//!   with its position: a broken link, a missing or out-of-order sequence number, a bad
//!   signature, an unknown key, a chain that does not start at 1.
//!
//! [`log`] writes a process's chain to Kafka ([`log::AuditLog`]) and verifies a whole audit
//! topic ([`log::verify_topic`]); everything else here is pure.
use std::collections::BTreeMap;
use std::fmt;

use ponte_proto::Timestamp;
use ponte_proto::audit::v1::{AuditEntry, Seal, audit_entry::Body};
use prost::Message as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

pub mod log;

/// Length of a SHA-256 hash.
pub const HASH_LEN: usize = 32;

/// SHA-256 of an entry's encoding: what the next entry names as `prev_hash`.
pub fn hash(encoded: &[u8]) -> [u8; HASH_LEN] {
    let d = ring::digest::digest(&ring::digest::SHA256, encoded);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a seal signs: the writer, a zero byte, the seal's sequence number (big-endian) and the
/// hash of the entry before it.
fn seal_message(writer: &str, seq: u64, prev_hash: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(writer.len() + 1 + 8 + prev_hash.len());
    m.extend_from_slice(writer.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(prev_hash);
    m
}

/// Errors of keys and entries.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit signing key: {0}")]
    Key(String),
    #[error("audit public key {key_id:?}: {reason}")]
    PublicKey { key_id: String, reason: String },
}

/// An Ed25519 signing key with the id its public half is known by.
pub struct Signer {
    key_id: String,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Signer {
    /// From a PKCS#8 v2 document (what [`Signer::generate`] returns; `ponte pki dev` writes
    /// one per service).
    pub fn from_pkcs8(key_id: &str, pkcs8: &[u8]) -> Result<Self, AuditError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| AuditError::Key(e.to_string()))?;
        Ok(Self {
            key_id: key_id.to_owned(),
            pair,
        })
    }

    /// A new key as a PKCS#8 document.
    pub fn generate() -> Result<Vec<u8>, AuditError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| AuditError::Key(e.to_string()))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key (32 bytes), for the deployment's `[audit.keys]`.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// The public keys seals may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct Keys(BTreeMap<String, Vec<u8>>);

impl Keys {
    pub fn insert(&mut self, key_id: &str, public_key: Vec<u8>) -> Result<(), AuditError> {
        if public_key.len() != 32 {
            return Err(AuditError::PublicKey {
                key_id: key_id.to_owned(),
                reason: format!("{} bytes, an Ed25519 public key has 32", public_key.len()),
            });
        }
        self.0.insert(key_id.to_owned(), public_key);
        Ok(())
    }

    fn get(&self, key_id: &str) -> Option<&[u8]> {
        self.0.get(key_id).map(Vec::as_slice)
    }
}

/// Keyed hashes of identifiers (HMAC-SHA-256 under the deployment's audit subject key),
/// separated by kind so a NIS and a family id with the same digits never collide.
#[derive(Clone)]
pub struct SubjectKey(ring::hmac::Key);

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

impl SubjectKey {
    /// From the key's bytes (at least 32).
    pub fn new(secret: &[u8]) -> Result<Self, AuditError> {
        if secret.len() < 32 {
            return Err(AuditError::Key(format!(
                "the subject key has {} bytes; at least 32 are needed",
                secret.len()
            )));
        }
        Ok(Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)))
    }

    /// The keyed hash of identifier `id` of kind `kind` (`nis`, `family`, `record`).
    pub fn hash(&self, kind: &str, id: &str) -> Vec<u8> {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(id.as_bytes());
        ctx.sign().as_ref().to_vec()
    }
}

/// One writer's chain: numbers its entries, links them, and seals them.
#[derive(Debug)]
pub struct Chain {
    writer: String,
    seq: u64,
    last_hash: [u8; HASH_LEN],
    since_seal: u64,
}

impl Chain {
    /// A new chain for `writer` (nothing written yet).
    pub fn new(writer: &str) -> Self {
        Self {
            writer: writer.to_owned(),
            seq: 0,
            last_hash: [0; HASH_LEN],
            since_seal: 0,
        }
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Entries appended since the last seal.
    pub fn unsealed(&self) -> u64 {
        self.since_seal
    }

    /// The next entry with `body`, encoded; the chain moves on to it.
    pub fn append(&mut self, body: Body, time: Timestamp) -> Vec<u8> {
        self.seq += 1;
        let sealed = matches!(body, Body::Seal(_));
        let entry = AuditEntry {
            writer: self.writer.clone(),
            seq: self.seq,
            prev_hash: self.last_hash.to_vec(),
            time: Some(time),
            body: Some(body),
        };
        let encoded = entry.encode_to_vec();
        self.last_hash = hash(&encoded);
        self.since_seal = if sealed { 0 } else { self.since_seal + 1 };
        encoded
    }

    /// A seal of everything appended so far, signed by `signer`, encoded.
    pub fn seal(&mut self, signer: &Signer, time: Timestamp) -> Vec<u8> {
        let message = seal_message(&self.writer, self.seq + 1, &self.last_hash);
        let body = Body::Seal(Seal {
            key_id: signer.key_id.clone(),
            signature: signer.sign(&message),
        });
        self.append(body, time)
    }
}

/// Where an entry sits in the topic (or any other sequence): shown in reports.
pub type Position = String;

/// What is wrong with the log at one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub position: Position,
    pub writer: String,
    pub seq: u64,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The bytes are not an audit entry.
    Undecodable(String),
    /// The first entry of a writer is not sequence number 1.
    NoStart { first: u64 },
    /// Sequence numbers were skipped: entries deleted.
    Missing { expected: u64 },
    /// A sequence number at or below one already seen: entries reordered or replayed.
    OutOfOrder { expected: u64 },
    /// `prev_hash` is not the hash of the entry before: that entry was altered, or this one
    /// was inserted.
    BrokenLink,
    /// A seal by a key the deployment does not list.
    UnknownKey { key_id: String },
    /// A seal whose signature does not match the chain before it: an entry before it was
    /// forged or changed with its links recomputed.
    BadSignature { key_id: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.kind {
            ProblemKind::Undecodable(e) => format!("not an audit entry: {e}"),
            ProblemKind::NoStart { first } => {
                format!("the chain starts at sequence {first}, not 1: its first entries are missing")
            }
            ProblemKind::Missing { expected } => format!(
                "sequence {} where {expected} was due: {} entr{} missing",
                self.seq,
                self.seq - expected,
                if self.seq - expected == 1 { "y is" } else { "ies are" }
            ),
            ProblemKind::OutOfOrder { expected } => format!(
                "sequence {} where {expected} was due: entries reordered or replayed",
                self.seq
            ),
            ProblemKind::BrokenLink => {
                "broken link: the previous entry is not the one this entry was written after (altered, or this one inserted)".to_owned()
            }
            ProblemKind::UnknownKey { key_id } => {
                format!("sealed with key {key_id:?}, which the deployment does not list")
            }
            ProblemKind::BadSignature { key_id } => format!(
                "bad signature (key {key_id:?}): an entry before this seal was forged or altered"
            ),
        };
        write!(
            f,
            "{}: writer {} sequence {}: {what}",
            self.position, self.writer, self.seq
        )
    }
}

#[derive(Debug)]
struct WriterState {
    next_seq: u64,
    last_hash: [u8; HASH_LEN],
    /// Entries after the last good seal.
    unsealed: u64,
}

/// Checks entries in the order they were written per writer (a writer's entries share one
/// topic partition, so the topic's order is theirs).
#[derive(Debug)]
pub struct Verifier {
    keys: Keys,
    writers: BTreeMap<String, WriterState>,
    problems: Vec<Problem>,
    entries: u64,
    seals: u64,
}

/// What a walk of the log found.
#[derive(Debug)]
pub struct Report {
    pub entries: u64,
    pub writers: usize,
    pub seals: u64,
    /// Every problem, in the order met.
    pub problems: Vec<Problem>,
    /// Per writer, entries after its last seal (not yet signed: a forgery there would only show
    /// at the next seal).
    pub unsealed: BTreeMap<String, u64>,
}

impl Verifier {
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            writers: BTreeMap::new(),
            problems: Vec::new(),
            entries: 0,
            seals: 0,
        }
    }

    /// Checks the next entry (as encoded) at `position`.
    pub fn check(&mut self, position: &str, encoded: &[u8]) {
        self.entries += 1;
        let entry = match AuditEntry::decode(encoded) {
            Ok(e) => e,
            Err(e) => {
                self.problems.push(Problem {
                    position: position.to_owned(),
                    writer: String::new(),
                    seq: 0,
                    kind: ProblemKind::Undecodable(e.to_string()),
                });
                return;
            }
        };
        let problem = |kind| Problem {
            position: position.to_owned(),
            writer: entry.writer.clone(),
            seq: entry.seq,
            kind,
        };
        let own_hash = hash(encoded);
        let state = match self.writers.get_mut(&entry.writer) {
            Some(s) => s,
            None => {
                if entry.seq != 1 {
                    self.problems
                        .push(problem(ProblemKind::NoStart { first: entry.seq }));
                }
                self.writers.insert(
                    entry.writer.clone(),
                    WriterState {
                        next_seq: entry.seq + 1,
                        last_hash: own_hash,
                        unsealed: 1,
                    },
                );
                if entry.seq == 1 && entry.prev_hash != [0u8; HASH_LEN] {
                    self.problems.push(problem(ProblemKind::BrokenLink));
                }
                return;
            }
        };
        if entry.seq < state.next_seq {
            self.problems.push(problem(ProblemKind::OutOfOrder {
                expected: state.next_seq,
            }));
            // A replayed or moved entry: the chain goes on from where it was.
            return;
        }
        if entry.seq > state.next_seq {
            self.problems.push(problem(ProblemKind::Missing {
                expected: state.next_seq,
            }));
        } else if entry.prev_hash != state.last_hash {
            self.problems.push(problem(ProblemKind::BrokenLink));
        }
        if let Some(Body::Seal(seal)) = &entry.body {
            self.seals += 1;
            match self.keys.get(&seal.key_id) {
                None => self.problems.push(problem(ProblemKind::UnknownKey {
                    key_id: seal.key_id.clone(),
                })),
                Some(public) => {
                    let message = seal_message(&entry.writer, entry.seq, &entry.prev_hash);
                    let ok = UnparsedPublicKey::new(&ED25519, public)
                        .verify(&message, &seal.signature)
                        .is_ok();
                    if ok {
                        state.unsealed = 0;
                    } else {
                        self.problems.push(problem(ProblemKind::BadSignature {
                            key_id: seal.key_id.clone(),
                        }));
                    }
                }
            }
        } else {
            state.unsealed += 1;
        }
        state.next_seq = entry.seq + 1;
        state.last_hash = own_hash;
    }

    pub fn finish(self) -> Report {
        Report {
            entries: self.entries,
            writers: self.writers.len(),
            seals: self.seals,
            problems: self.problems,
            unsealed: self
                .writers
                .into_iter()
                .filter(|(_, s)| s.unsealed > 0)
                .map(|(w, s)| (w, s.unsealed))
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ponte_proto::audit::v1::{Read, Start, read::Subject};

    fn t(s: i64) -> Timestamp {
        Timestamp {
            seconds: s,
            nanos: 0,
        }
    }

    #[test]
    fn the_log_producer_lingers_2_ms_unless_configured_otherwise() {
        let c: AuditConfig = ponte_runtime::config::load("", None, Vec::new()).unwrap();
        assert_eq!(c.linger(), std::time::Duration::from_millis(2));
        assert_eq!(AuditConfig::default().linger(), c.linger());
        let env = vec![("PONTE__LINGER_MS".to_owned(), "0".to_owned())];
        let c: AuditConfig = ponte_runtime::config::load("", None, env).unwrap();
        assert_eq!(c.linger(), std::time::Duration::ZERO);
    }

    fn signer() -> Signer {
        Signer::from_pkcs8("reconciler-1", &Signer::generate().unwrap()).unwrap()
    }

    fn keys(s: &Signer) -> Keys {
        let mut k = Keys::default();
        k.insert(s.key_id(), s.public_key()).unwrap();
        k
    }

    fn read(nis: &[u8]) -> Body {
        Body::Read(Read {
            principal: "urn:ponte:principal:municipality-sp".into(),
            rpc: "GetPerson".into(),
            subject: Some(Subject::Person(nis.to_vec())),
            returned: 1,
        })
    }

    /// A writer's log: a start, reads, a seal after every third entry, a final seal.
    fn log(s: &Signer, reads: usize) -> Vec<Vec<u8>> {
        let mut c = Chain::new("reconciler/boot-1");
        let mut out = vec![c.append(
            Body::Start(Start {
                service: "reconciler".into(),
                key_id: s.key_id().into(),
            }),
            t(1),
        )];
        for i in 0..reads {
            out.push(c.append(read(&[i as u8]), t(2 + i as i64)));
            if c.unsealed() == 3 {
                out.push(c.seal(s, t(100)));
            }
        }
        out.push(c.seal(s, t(200)));
        out
    }

    fn verify(keys: Keys, entries: &[Vec<u8>]) -> Report {
        let mut v = Verifier::new(keys);
        for (i, e) in entries.iter().enumerate() {
            v.check(&format!("offset {i}"), e);
        }
        v.finish()
    }

    fn first(report: &Report) -> (&str, &ProblemKind) {
        let p = report.problems.first().expect("a problem");
        (p.position.as_str(), &p.kind)
    }

    #[test]
    fn an_untouched_log_verifies() {
        let s = signer();
        let r = verify(keys(&s), &log(&s, 7));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.seals, 3);
        assert!(r.unsealed.is_empty());
    }

    #[test]
    fn a_deleted_entry_is_a_missing_sequence_number_at_its_successor() {
        let s = signer();
        let mut entries = log(&s, 7);
        entries.remove(2);
        let r = verify(keys(&s), &entries);
        assert_eq!(
            first(&r),
            ("offset 2", &ProblemKind::Missing { expected: 3 })
        );
    }

    #[test]
    fn reordered_entries_are_out_of_order() {
        let s = signer();
        let mut entries = log(&s, 7);
        entries.swap(2, 3);
        let r = verify(keys(&s), &entries);
        assert_eq!(
            first(&r),
            ("offset 2", &ProblemKind::Missing { expected: 3 })
        );
        assert!(
            r.problems
                .iter()
                .any(|p| p.position == "offset 3"
                    && p.kind == ProblemKind::OutOfOrder { expected: 5 }),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn an_altered_entry_breaks_the_link_of_the_next() {
        let s = signer();
        let mut entries = log(&s, 7);
        let mut e = AuditEntry::decode(entries[2].as_slice()).unwrap();
        e.body = Some(read(b"someone else"));
        entries[2] = e.encode_to_vec();
        let r = verify(keys(&s), &entries);
        assert_eq!(first(&r), ("offset 3", &ProblemKind::BrokenLink));
    }

    #[test]
    fn a_forged_entry_with_recomputed_links_fails_the_next_seal() {
        let s = signer();
        let entries = log(&s, 7);
        // The forger rewrites entry 2 and every link after it, up to the next seal, which it
        // cannot sign again without the key: it re-uses the old signature.
        let mut forged: Vec<Vec<u8>> = entries[..2].to_vec();
        let mut last = hash(&entries[1]);
        for (i, original) in entries.iter().enumerate().skip(2) {
            let mut e = AuditEntry::decode(original.as_slice()).unwrap();
            if i == 2 {
                e.body = Some(read(b"forged"));
            }
            e.prev_hash = last.to_vec();
            let bytes = e.encode_to_vec();
            last = hash(&bytes);
            forged.push(bytes);
        }
        let r = verify(keys(&s), &forged);
        let (position, kind) = first(&r);
        assert_eq!(
            kind,
            &ProblemKind::BadSignature {
                key_id: "reconciler-1".into()
            }
        );
        // The first seal after the forged entry (0 start, 1 and 2 reads, 3 the seal).
        assert_eq!(position, "offset 3");
    }

    #[test]
    fn a_seal_by_a_key_the_deployment_does_not_list_is_reported() {
        let s = signer();
        let other = signer();
        let r = verify(keys(&other), &log(&s, 2));
        assert!(matches!(first(&r).1, ProblemKind::BadSignature { .. }));
        let r = verify(Keys::default(), &log(&s, 2));
        assert_eq!(
            first(&r).1,
            &ProblemKind::UnknownKey {
                key_id: "reconciler-1".into()
            }
        );
    }

    #[test]
    fn a_chain_missing_its_start_and_unsealed_tails_are_reported() {
        let s = signer();
        let entries = log(&s, 7);
        let r = verify(keys(&s), &entries[1..]);
        assert_eq!(first(&r), ("offset 0", &ProblemKind::NoStart { first: 2 }));
        let r = verify(keys(&s), &entries[..entries.len() - 1]);
        assert!(r.problems.is_empty());
        assert_eq!(r.unsealed.get("reconciler/boot-1"), Some(&2));
    }

    #[test]
    fn subjects_are_keyed_hashes_separated_by_kind() {
        let k = SubjectKey::new(&[7u8; 32]).unwrap();
        let nis = k.hash("nis", "26827649960");
        assert_eq!(nis, k.hash("nis", "26827649960"));
        assert_ne!(nis, k.hash("family", "26827649960"));
        assert_ne!(
            nis,
            SubjectKey::new(&[8u8; 32])
                .unwrap()
                .hash("nis", "26827649960")
        );
        assert!(!nis.windows(11).any(|w| w == b"26827649960"));
        assert!(SubjectKey::new(&[1u8; 16]).is_err());
    }
}

/// The `[audit]` section of the configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the services' signing keys, `<service>.pk8` each (`ponte audit keygen`,
    /// or `ponte pki dev`); the key id is the service's name. Required unless `disabled`: a
    /// service without it refuses to start.
    #[serde(default)]
    pub key_dir: String,
    /// File of the secret (at least 32 bytes) under which identifiers are hashed in the log;
    /// required with `key_dir`.
    #[serde(default)]
    pub subject_key_file: String,
    /// The public keys seals may be signed with: key id → base64 of the 32-byte Ed25519
    /// public key (`ponte audit keygen` prints the line to add).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Run without an audit log (a benchmark's baseline, an experiment): writes, reads and
    /// refusals are not recorded; each service warns at start and sets
    /// `ponte_audit_disabled{service} 1`.
    #[serde(default)]
    pub disabled: bool,
    /// How long the log's producer waits to put several entries in one produce request
    /// (librdkafka's `linger.ms`). Every read and write waits for its entry's acknowledgement,
    /// so up to this much is added to each; 2 ms by default: at 5,000 `GetPerson` calls/s it
    /// halved the server's CPU per call and brought the p99 from 7.8 to 4.3 ms against 0 ms,
    /// for a median of 2.6 ms instead of 1.2 (docs/benchmarks.md, "The audit log's linger").
    /// 0 sends each entry at once (those queued while a request is in flight still go
    /// together).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
}

fn default_linger_ms() -> u32 {
    2
}

impl Default for AuditConfig {
    /// As an empty `[audit]` section reads.
    fn default() -> Self {
        Self {
            key_dir: String::new(),
            subject_key_file: String::new(),
            keys: BTreeMap::new(),
            disabled: false,
            linger_ms: default_linger_ms(),
        }
    }
}

impl AuditConfig {
    /// The log producer's linger ([`Self::linger_ms`]).
    pub fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.linger_ms))
    }

    /// `service`'s signing key and the subject key; `None` only when the log is `disabled`
    /// (said in a warning and the `ponte_audit_disabled{service}` gauge). Without keys and
    /// not disabled, an error naming the keys to set: the log is on by default.
    pub fn service_keys(&self, service: &str) -> Result<Option<(Signer, SubjectKey)>, AuditError> {
        if self.disabled {
            tracing::warn!(
                service,
                "audit log DISABLED (audit.disabled = true): writes, reads and refusals are not recorded"
            );
            metrics::gauge!("ponte_audit_disabled", "service" => service.to_owned()).set(1.0);
            return Ok(None);
        }
        if self.key_dir.is_empty() {
            return Err(AuditError::Key(format!(
                "audit.key_dir is not set: every service records its writes, reads and refusals \
                 in the audit log, signed with <key_dir>/{service}.pk8 (`ponte audit keygen`, or \
                 `ponte pki dev` for development keys); set audit.key_dir and \
                 audit.subject_key_file, or audit.disabled = true to run without a log"
            )));
        }
        let path = std::path::Path::new(&self.key_dir).join(format!("{service}.pk8"));
        let pkcs8 = std::fs::read(&path)
            .map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))?;
        let signer = Signer::from_pkcs8(service, &pkcs8)
            .map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))?;
        if self.subject_key_file.is_empty() {
            return Err(AuditError::Key(
                "audit.subject_key_file must be set with audit.key_dir".to_owned(),
            ));
        }
        let secret = std::fs::read(&self.subject_key_file)
            .map_err(|e| AuditError::Key(format!("{}: {e}", self.subject_key_file)))?;
        Ok(Some((signer, SubjectKey::new(&secret)?)))
    }

    /// The configured keys, each checked.
    pub fn keys(&self) -> Result<Keys, AuditError> {
        let mut keys = Keys::default();
        for (id, b64) in &self.keys {
            keys.insert(id, decode_key(id, b64)?)?;
        }
        Ok(keys)
    }
}

/// The services that write the audit log, each with its own key `<service>.pk8`.
pub const SERVICES: [&str; 4] = ["education", "health", "assistance", "reconciler"];

/// Development audit keys written by [`write_dev_keys`]: what `[audit]` needs.
#[derive(Debug, Clone)]
pub struct DevKeys {
    /// `audit.key_dir`.
    pub key_dir: std::path::PathBuf,
    /// `audit.subject_key_file`.
    pub subject_key_file: std::path::PathBuf,
    /// `audit.keys`: key id (the service) → base64 public key.
    pub public: BTreeMap<String, String>,
}

/// Writes a signing key per service of [`SERVICES`] and a 32-byte subject key into `dir`
/// (created), private to the owner — for `ponte pki dev`, the tests and the benchmarks, never
/// for a real deployment (whose keys are made and kept by its operators: `ponte audit keygen`).
pub fn write_dev_keys(dir: &std::path::Path) -> Result<DevKeys, AuditError> {
    let io =
        |p: &std::path::Path, e: std::io::Error| AuditError::Key(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let write = |path: &std::path::Path, bytes: &[u8]| -> Result<(), AuditError> {
        use std::io::Write as _;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        o.open(path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| io(path, e))
    };
    let mut public = BTreeMap::new();
    for service in SERVICES {
        let pkcs8 = Signer::generate()?;
        write(&dir.join(format!("{service}.pk8")), &pkcs8)?;
        let signer = Signer::from_pkcs8(service, &pkcs8)?;
        public.insert(service.to_owned(), encode_key(&signer.public_key()));
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| AuditError::Key("no randomness for the subject key".to_owned()))?;
    let subject_key_file = dir.join("subject.key");
    write(&subject_key_file, &secret)?;
    Ok(DevKeys {
        key_dir: dir.to_path_buf(),
        subject_key_file,
        public,
    })
}

/// A public key given as base64 (standard alphabet).
pub fn decode_key(key_id: &str, b64: &str) -> Result<Vec<u8>, AuditError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| AuditError::PublicKey {
            key_id: key_id.to_owned(),
            reason: format!("not base64: {e}"),
        })
}

/// `key` as the configuration writes it (base64, standard alphabet).
pub fn encode_key(key: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}
