//! The access policy: per principal, what it may send and what it may read.
//!
//! A principal is the name a client certificate or a bearer token's subject gives
//! (`urn:ponte:principal:education`). The policy file (TOML, `docs/security.md`) lists every
//! principal and its rights; a principal not in it may do nothing, and a right not written down
//! is not granted.
//!
//! ```toml
//! [defaults]
//! max_concurrent_requests = 64   # per principal, per service instance
//! max_watch_streams = 2          # open WatchChanges streams per principal
//!
//! [principals."urn:ponte:principal:education"]
//! send = { adapter = "education", records = ["attendance"], source_system = "education" }
//!
//! [principals."urn:ponte:principal:state-sp"]
//! read = { scopes = ["state:SP"], rpcs = ["GetPerson", "ListPersons"], conditionalities = ["all"] }
//! limits = { max_concurrent_requests = 16 }
//!
//! [principals."urn:ponte:principal:operator"]
//! operator = true
//! read = { rpcs = ["ListParked"] }
//! ```
//!
//! Decisions are methods returning typed results: [`Policy::may_send`] gives the
//! [`SourceSystem`] the principal's records carry (never one from configuration or the body),
//! [`Policy::may_call`] gives a [`Grant`] that tells which municipalities and conditionalities
//! the caller may see, so a service can filter what it returns and answer `PERMISSION_DENIED`
//! for a person out of scope without revealing whether that person exists.
//!
//! Pure: the only I/O is [`Policy::load`] reading the file. [`SharedPolicy`] holds the policy
//! in force and swaps it on [`SharedPolicy::reload`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use ponte_domain::ids::IbgeMunicipality;
use serde::Deserialize;

use crate::AccessError;

/// Concurrent requests one principal may have in flight at one service instance, when neither
/// the principal's `limits` nor the file's `[defaults]` say otherwise.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 64;
/// `WatchChanges` streams one principal may hold open at one reconciler instance, by default.
pub const DEFAULT_MAX_WATCH_STREAMS: u32 = 2;

/// The prefix of the development principals' names ([`dev_principal`]).
pub const PRINCIPAL_URN_PREFIX: &str = "urn:ponte:principal:";

/// The short names of the development PKI's principals, in the order of [`dev_policy_toml`].
pub const DEV_PRINCIPALS: [&str; 8] = [
    "education",
    "health",
    "assistance",
    "federal",
    "state-sp",
    "municipality-3550308",
    "operator",
    "reconciler",
];

/// The full principal name of a development principal: `urn:ponte:principal:<short>`.
pub fn dev_principal(short: &str) -> String {
    format!("{PRINCIPAL_URN_PREFIX}{short}")
}

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

/// A sector adapter, the service a principal sends records to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Adapter {
    /// `ponte education-adapter`.
    Education,
    /// `ponte health-adapter`.
    Health,
    /// `ponte assistance-adapter`.
    Assistance,
}

impl Adapter {
    /// Every adapter.
    pub const ALL: [Adapter; 3] = [Adapter::Education, Adapter::Health, Adapter::Assistance];

    /// The name used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Adapter::Education => "education",
            Adapter::Health => "health",
            Adapter::Assistance => "assistance",
        }
    }

    /// The adapter of this policy-file name.
    pub fn parse(name: &str) -> Option<Adapter> {
        Adapter::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind of record an adapter accepts. Each kind belongs to one adapter, but for household
/// evidence, which every sector sends to its own adapter ([`RecordKind::adapters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// School attendance (`POST /v1/attendance`, JSON or CSV) — education adapter.
    Attendance,
    /// Health follow-up (FHIR bundles, the simple JSON form, pulled resources) — health adapter.
    Health,
    /// Registry person profiles (`POST /v1/persons`) — assistance adapter.
    Person,
    /// SCFV attendance (`POST /v1/scfv-attendance`) — assistance adapter.
    Scfv,
    /// Family follow-up (`POST /v1/family-follow-ups`) — assistance adapter.
    FollowUp,
    /// Appeals (`POST /v1/appeals`) — assistance adapter.
    Appeal,
    /// Orders to erase a person (`POST /v1/erasures`, `ponte erase`) — assistance adapter.
    Erasure,
    /// Household profiles of a household-accompaniment programme such as Colombia's Unidos
    /// (`POST /v1/household-profiles`) — assistance adapter.
    HouseholdProfile,
    /// Evidence about a household of a household-accompaniment programme
    /// (`POST /v1/household-evidence`): social workers' visits and registry items at the
    /// assistance adapter, the education and health sectors' results at theirs — each sector
    /// sends its own source's evidence to its own adapter.
    HouseholdEvidence,
}

impl RecordKind {
    /// Every record kind.
    pub const ALL: [RecordKind; 9] = [
        RecordKind::Attendance,
        RecordKind::Health,
        RecordKind::Person,
        RecordKind::Scfv,
        RecordKind::FollowUp,
        RecordKind::Appeal,
        RecordKind::Erasure,
        RecordKind::HouseholdProfile,
        RecordKind::HouseholdEvidence,
    ];

    /// The name used in the policy file (for the assistance kinds, the adapter's own short
    /// names: `person`, `scfv`, `follow-up`, `appeal`, `household-profile`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Attendance => "attendance",
            RecordKind::Health => "health",
            RecordKind::Person => "person",
            RecordKind::Scfv => "scfv",
            RecordKind::FollowUp => "follow-up",
            RecordKind::Appeal => "appeal",
            RecordKind::Erasure => "erasure",
            RecordKind::HouseholdProfile => "household-profile",
            RecordKind::HouseholdEvidence => "household-evidence",
        }
    }

    /// The record kind of this policy-file name.
    pub fn parse(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The adapters that accept records of this kind: one, but for household evidence, which
    /// each sector sends to its own adapter (a principal still sends to one adapter only).
    pub fn adapters(self) -> &'static [Adapter] {
        match self {
            RecordKind::Attendance => &[Adapter::Education],
            RecordKind::Health => &[Adapter::Health],
            RecordKind::Person
            | RecordKind::Scfv
            | RecordKind::FollowUp
            | RecordKind::Appeal
            | RecordKind::Erasure
            | RecordKind::HouseholdProfile => &[Adapter::Assistance],
            RecordKind::HouseholdEvidence => {
                &[Adapter::Education, Adapter::Health, Adapter::Assistance]
            }
        }
    }

    /// Whether `adapter` accepts records of this kind.
    pub fn accepted_by(self, adapter: Adapter) -> bool {
        self.adapters().contains(&adapter)
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A method of `ponte.compliance.v1.ComplianceService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rpc {
    /// `GetPerson`.
    GetPerson,
    /// `GetFamily`.
    GetFamily,
    /// `ListPersons`.
    ListPersons,
    /// `GetIndicators`.
    GetIndicators,
    /// `WatchChanges`.
    WatchChanges,
    /// `ListParked` (raw CNS/CPF of unresolved health records): operators only.
    ListParked,
    /// `GetHousehold` (deployments with household achievements).
    GetHousehold,
    /// `GetHouseholdIndicators`.
    GetHouseholdIndicators,
}

impl Rpc {
    /// Every method.
    pub const ALL: [Rpc; 8] = [
        Rpc::GetPerson,
        Rpc::GetFamily,
        Rpc::ListPersons,
        Rpc::GetIndicators,
        Rpc::WatchChanges,
        Rpc::ListParked,
        Rpc::GetHousehold,
        Rpc::GetHouseholdIndicators,
    ];

    /// The gRPC method name, as written in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::GetPerson => "GetPerson",
            Rpc::GetFamily => "GetFamily",
            Rpc::ListPersons => "ListPersons",
            Rpc::GetIndicators => "GetIndicators",
            Rpc::WatchChanges => "WatchChanges",
            Rpc::ListParked => "ListParked",
            Rpc::GetHousehold => "GetHousehold",
            Rpc::GetHouseholdIndicators => "GetHouseholdIndicators",
        }
    }

    /// The method of this name.
    pub fn parse(name: &str) -> Option<Rpc> {
        Rpc::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether answering this method reveals views, so that a read scope and conditionalities
    /// must be granted with it (every method but `ListParked`).
    pub fn reads_views(self) -> bool {
        self != Rpc::ListParked
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state (UF) abbreviations and their IBGE codes, the first two digits of every municipality
/// code of the state.
const UFS: [(&str, u8); 27] = [
    ("RO", 11),
    ("AC", 12),
    ("AM", 13),
    ("RR", 14),
    ("PA", 15),
    ("AP", 16),
    ("TO", 17),
    ("MA", 21),
    ("PI", 22),
    ("CE", 23),
    ("RN", 24),
    ("PB", 25),
    ("PE", 26),
    ("AL", 27),
    ("SE", 28),
    ("BA", 29),
    ("MG", 31),
    ("ES", 32),
    ("RJ", 33),
    ("SP", 35),
    ("PR", 41),
    ("SC", 42),
    ("RS", 43),
    ("MS", 50),
    ("MT", 51),
    ("GO", 52),
    ("DF", 53),
];

/// The IBGE code of a state (UF) abbreviation (`SP` → 35).
pub fn uf_code(abbreviation: &str) -> Option<u8> {
    UFS.iter()
        .find(|(a, _)| *a == abbreviation)
        .map(|&(_, code)| code)
}

/// What a principal may read: a level of government and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `federal`: every municipality, and persons with no municipality yet.
    Federal,
    /// `state:<UF>`: every municipality of one state.
    State {
        /// The two-letter abbreviation, e.g. `SP`.
        abbreviation: &'static str,
        /// Its IBGE code, e.g. 35.
        code: u8,
    },
    /// `municipality:<IBGE>`: one municipality.
    Municipality(IbgeMunicipality),
}

impl Scope {
    /// Parses `federal`, `state:<UF>` or `municipality:<7-digit IBGE code>`; the error says why.
    pub fn parse(text: &str) -> Result<Scope, String> {
        if text == "federal" {
            return Ok(Scope::Federal);
        }
        if let Some(uf) = text.strip_prefix("state:") {
            let Some(&(abbreviation, code)) = UFS.iter().find(|(a, _)| *a == uf) else {
                return Err(if UFS.iter().any(|(a, _)| a.eq_ignore_ascii_case(uf)) {
                    format!(
                        "state {uf:?}: write the UF in capitals, e.g. state:{}",
                        uf.to_ascii_uppercase()
                    )
                } else {
                    format!("{uf:?} is not a Brazilian state (UF) abbreviation, e.g. state:SP")
                });
            };
            return Ok(Scope::State { abbreviation, code });
        }
        if let Some(code) = text.strip_prefix("municipality:") {
            if code.len() != 7 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "municipality {code:?}: an IBGE municipality code is 7 digits, e.g. municipality:3550308"
                ));
            }
            return IbgeMunicipality::parse(code)
                .map(Scope::Municipality)
                .map_err(|e| format!("municipality {code:?}: {e}"));
        }
        Err(format!(
            "{text:?} is not a scope: write federal, state:<UF> or municipality:<IBGE code>"
        ))
    }

    /// Whether this scope covers `municipality`. Only `federal` covers
    /// [`IbgeMunicipality::NONE`] (a person whose municipality is not known yet).
    pub fn covers(&self, municipality: &IbgeMunicipality) -> bool {
        match self {
            Scope::Federal => true,
            _ if *municipality == IbgeMunicipality::NONE => false,
            Scope::State { code, .. } => municipality.uf() == *code,
            Scope::Municipality(m) => m == municipality,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Federal => f.write_str("federal"),
            Scope::State { abbreviation, .. } => write!(f, "state:{abbreviation}"),
            Scope::Municipality(m) => write!(f, "municipality:{}", m.as_str()),
        }
    }
}

/// The conditionalities (rule-set ids: `education`, `health`, `assistance`, …) a principal may
/// see outcomes of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditionalities {
    /// `["all"]`: every conditionality of the rule set.
    All,
    /// These ids only.
    Only(BTreeSet<String>),
}

impl Conditionalities {
    /// Whether `id` is granted.
    pub fn covers(&self, id: &str) -> bool {
        match self {
            Conditionalities::All => true,
            Conditionalities::Only(ids) => ids.contains(id),
        }
    }
}

/// The name of the source system a principal's records carry (`Event.source_system`, the
/// first part of every record id it sends). It comes from the policy, never from configuration
/// or from the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceSystem(Arc<str>);

impl SourceSystem {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-principal limits the services enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests of this principal in flight at once at one service instance; more are answered
    /// 429 / `RESOURCE_EXHAUSTED`.
    pub max_concurrent_requests: u32,
    /// `WatchChanges` streams of this principal open at once at one reconciler instance.
    pub max_watch_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_watch_streams: DEFAULT_MAX_WATCH_STREAMS,
        }
    }
}

/// What a principal may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRights {
    /// The adapter it sends to.
    pub adapter: Adapter,
    /// The record kinds it may send there.
    pub records: BTreeSet<RecordKind>,
    /// The source system its records carry.
    pub source_system: SourceSystem,
}

/// What a principal may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRights {
    /// Where: never empty when a view-reading method is granted.
    pub scopes: Vec<Scope>,
    /// Which methods.
    pub rpcs: BTreeSet<Rpc>,
    /// Outcomes of which conditionalities.
    pub conditionalities: Conditionalities,
}

impl ReadRights {
    fn none() -> ReadRights {
        ReadRights {
            scopes: Vec::new(),
            rpcs: BTreeSet::new(),
            conditionalities: Conditionalities::Only(BTreeSet::new()),
        }
    }
}

/// One principal's entry of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalRights {
    /// Its name.
    pub name: Arc<str>,
    /// Whether it has the operator role (may call `ListParked` when it lists it).
    pub operator: bool,
    /// Whether it is an instance of the reconciler: it may read, unfiltered, the views of the
    /// partitions another instance owns (`ponte.reconciler.v1.PeerService`), to answer its own
    /// callers with their grants applied.
    pub peer: bool,
    /// What it may send, if anything.
    pub send: Option<SendRights>,
    /// What it may read (nothing when the file has no `read` for it).
    pub read: ReadRights,
    /// Its limits.
    pub limits: Limits,
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// Why a request was refused. Says nothing about the data asked for (whether a person exists),
/// only about the caller's rights; a service answers 403 / `PERMISSION_DENIED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The principal is not in the access policy.
    #[error("principal {principal:?} is not in the access policy")]
    UnknownPrincipal {
        /// The principal.
        principal: String,
    },
    /// The principal may not send to this adapter.
    #[error("principal {principal:?} may not send to the {adapter} adapter")]
    Adapter {
        /// The principal.
        principal: String,
        /// The adapter.
        adapter: Adapter,
    },
    /// The principal may not send records of this kind.
    #[error("principal {principal:?} may not send {kind} records to the {adapter} adapter")]
    RecordKind {
        /// The principal.
        principal: String,
        /// The adapter.
        adapter: Adapter,
        /// The record kind.
        kind: RecordKind,
    },
    /// The principal may not call this method.
    #[error("principal {principal:?} may not call {rpc}")]
    Rpc {
        /// The principal.
        principal: String,
        /// The method.
        rpc: Rpc,
    },
    /// The principal is not an instance of the reconciler (`peer = true`).
    #[error("principal {principal:?} is not a reconciler instance (peer)")]
    NotPeer {
        /// The principal.
        principal: String,
    },
}

/// Longest principal name a [`Denied`] repeats (names come from certificates and tokens).
const MAX_ECHOED_PRINCIPAL: usize = 256;

fn echo(principal: &str) -> String {
    match principal.char_indices().nth(MAX_ECHOED_PRINCIPAL) {
        Some((at, _)) => format!("{}…", &principal[..at]),
        None => principal.to_owned(),
    }
}

/// The right to call one method, with what the answer may show.
#[derive(Debug, Clone)]
pub struct Grant {
    principal: Arc<PrincipalRights>,
    rpc: Rpc,
}

impl Grant {
    /// The principal granted.
    pub fn principal(&self) -> &str {
        &self.principal.name
    }

    /// The method granted.
    pub fn rpc(&self) -> Rpc {
        self.rpc
    }

    /// Whether the principal has the operator role.
    pub fn is_operator(&self) -> bool {
        self.principal.operator
    }

    /// The read scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.principal.read.scopes
    }

    /// Whether a `federal` scope is granted (everything, with no filtering by place).
    pub fn is_federal(&self) -> bool {
        self.scopes().contains(&Scope::Federal)
    }

    /// Whether the answer may show persons, families or indicators of `municipality`. Only a
    /// federal scope covers [`IbgeMunicipality::NONE`].
    pub fn covers_municipality(&self, municipality: &IbgeMunicipality) -> bool {
        self.scopes().iter().any(|s| s.covers(municipality))
    }

    /// [`Grant::covers_municipality`] for a code held as text; a text that is not a valid IBGE
    /// code (an empty one among them) is covered only by a federal scope.
    pub fn covers_municipality_code(&self, code: &str) -> bool {
        if self.is_federal() {
            return true;
        }
        IbgeMunicipality::parse(code).is_ok_and(|m| self.covers_municipality(&m))
    }

    /// Whether the answer may show outcomes (and effects caused by outcomes) of the
    /// conditionality with this rule-set id.
    pub fn covers_conditionality(&self, id: &str) -> bool {
        self.principal.read.conditionalities.covers(id)
    }

    /// The conditionalities granted.
    pub fn conditionalities(&self) -> &Conditionalities {
        &self.principal.read.conditionalities
    }

    /// The principal's limits.
    pub fn limits(&self) -> Limits {
        self.principal.limits
    }
}

/// A parsed, consistent access policy.
#[derive(Debug, Clone)]
pub struct Policy {
    name: String,
    defaults: Limits,
    principals: BTreeMap<String, Arc<PrincipalRights>>,
}

impl Policy {
    /// Reads and parses the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|e| AccessError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Policy::from_toml_str(&path.display().to_string(), &text)
    }

    /// Parses a policy from `text`; `name` (the file) is named in every error, with the
    /// principal and the key: `policy.toml: principals."urn:…".read.scopes[0]: …`.
    pub fn from_toml_str(name: &str, text: &str) -> Result<Policy, AccessError> {
        parse(name, text)
    }

    /// The file (or other name) the policy was read from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every principal's name, in order.
    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.principals.keys().map(String::as_str)
    }

    /// One principal's rights, if it is in the policy.
    pub fn principal(&self, principal: &str) -> Option<&PrincipalRights> {
        self.principals.get(principal).map(|p| &**p)
    }

    /// The limits of `[defaults]` (or the built-in ones).
    pub fn default_limits(&self) -> Limits {
        self.defaults
    }

    /// The limits of `principal`, if it is in the policy.
    pub fn limits(&self, principal: &str) -> Option<Limits> {
        self.principals.get(principal).map(|p| p.limits)
    }

    fn known(&self, principal: &str) -> Result<&Arc<PrincipalRights>, Denied> {
        self.principals
            .get(principal)
            .ok_or_else(|| Denied::UnknownPrincipal {
                principal: echo(principal),
            })
    }

    /// Whether `principal` may send records of `kind` to `adapter`; if so, the source system its
    /// records carry.
    pub fn may_send(
        &self,
        principal: &str,
        adapter: Adapter,
        kind: RecordKind,
    ) -> Result<SourceSystem, Denied> {
        let p = self.known(principal)?;
        let Some(send) = p.send.as_ref().filter(|s| s.adapter == adapter) else {
            return Err(Denied::Adapter {
                principal: echo(principal),
                adapter,
            });
        };
        if !kind.accepted_by(adapter) || !send.records.contains(&kind) {
            return Err(Denied::RecordKind {
                principal: echo(principal),
                adapter,
                kind,
            });
        }
        Ok(send.source_system.clone())
    }

    /// Whether `principal` may call `rpc`; if so, the grant that says what the answer may show.
    pub fn may_call(&self, principal: &str, rpc: Rpc) -> Result<Grant, Denied> {
        let p = self.known(principal)?;
        let operator_ok = rpc != Rpc::ListParked || p.operator;
        if !p.read.rpcs.contains(&rpc) || !operator_ok {
            return Err(Denied::Rpc {
                principal: echo(principal),
                rpc,
            });
        }
        Ok(Grant {
            principal: Arc::clone(p),
            rpc,
        })
    }

    /// Whether `principal` is a reconciler instance, which may read another instance's
    /// views unfiltered to answer its own callers (`peer = true`).
    pub fn may_peer(&self, principal: &str) -> Result<(), Denied> {
        if self.known(principal)?.peer {
            Ok(())
        } else {
            Err(Denied::NotPeer {
                principal: echo(principal),
            })
        }
    }

    /// Checks every conditionality id the policy names against those of the rule set in force
    /// (`known`); the reconciler calls it at start and on reload so that a misspelt id is an
    /// error rather than a silent denial.
    pub fn check_conditionalities(&self, known: &[&str]) -> Result<(), AccessError> {
        for p in self.principals.values() {
            if let Conditionalities::Only(ids) = &p.read.conditionalities {
                for (i, id) in ids.iter().enumerate() {
                    if !known.contains(&id.as_str()) {
                        return Err(AccessError::Policy(format!(
                            "{}: {}.read.conditionalities[{i}]: {id:?} is not a conditionality of the rule set (it has {})",
                            self.name,
                            principal_key(&p.name),
                            known.join(", ")
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The policy in force, shared by a service's handlers and replaced as a whole on reload.
///
/// Cloning gives another handle on the same policy. Handlers call [`SharedPolicy::may_send`] /
/// [`SharedPolicy::may_call`] (or take [`SharedPolicy::current`] once per request); a reload
/// never changes a policy a handler already holds.
///
/// Reloading is triggered by the service, not here: the services call
/// [`SharedPolicy::reload`] on SIGHUP or when they see the file change. That wiring is not part
/// of this module.
#[derive(Debug, Clone)]
pub struct SharedPolicy {
    inner: Arc<RwLock<Arc<Policy>>>,
}

impl SharedPolicy {
    /// Shares `policy`.
    pub fn new(policy: Policy) -> SharedPolicy {
        SharedPolicy {
            inner: Arc::new(RwLock::new(Arc::new(policy))),
        }
    }

    /// Loads the policy file at `path` and shares it.
    pub fn load(path: &Path) -> Result<SharedPolicy, AccessError> {
        Policy::load(path).map(SharedPolicy::new)
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.inner.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the policy in force.
    pub fn replace(&self, policy: Policy) {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }

    /// Reads the policy file at `path` again and puts it in force. When the file cannot be read
    /// or is invalid, the policy in force stays and the error says why.
    pub fn reload(&self, path: &Path) -> Result<(), AccessError> {
        let policy = Policy::load(path)?;
        self.replace(policy);
        Ok(())
    }

    /// [`Policy::may_send`] on the policy in force.
    pub fn may_send(
        &self,
        principal: &str,
        adapter: Adapter,
        kind: RecordKind,
    ) -> Result<SourceSystem, Denied> {
        self.current().may_send(principal, adapter, kind)
    }

    /// [`Policy::may_call`] on the policy in force.
    pub fn may_call(&self, principal: &str, rpc: Rpc) -> Result<Grant, Denied> {
        self.current().may_call(principal, rpc)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_concurrent_requests: Option<u32>,
    max_watch_streams: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSend {
    adapter: String,
    records: Vec<String>,
    source_system: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRead {
    #[serde(default)]
    scopes: Vec<String>,
    rpcs: Vec<String>,
    #[serde(default)]
    conditionalities: Vec<String>,
}

/// `principals."<name>"`, quoted as TOML would.
fn principal_key(name: &str) -> String {
    format!("principals.{name:?}")
}

/// Builds errors `<file>: <key>: <problem>`.
struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: &str, problem: impl fmt::Display) -> AccessError {
        AccessError::Policy(format!("{}: {key}: {problem}", self.file))
    }

    fn section<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        value: toml::Value,
    ) -> Result<T, AccessError> {
        value
            .try_into::<T>()
            .map_err(|e| self.err(key, e.message().trim_end()))
    }
}

fn parse(file: &str, text: &str) -> Result<Policy, AccessError> {
    let ctx = Ctx { file };
    let table: toml::Table =
        toml::from_str(text).map_err(|e| AccessError::Policy(format!("{file}: {e}")))?;
    let mut defaults = Limits::default();
    let mut principals = BTreeMap::new();
    for (key, value) in table {
        match key.as_str() {
            "defaults" => {
                let raw: RawLimits = ctx.section("defaults", value)?;
                defaults = limits(&ctx, "defaults", &raw, Limits::default())?;
            }
            "principals" => {
                let toml::Value::Table(entries) = value else {
                    return Err(ctx.err("principals", "must be a table of principals"));
                };
                for (name, entry) in entries {
                    let key = principal_key(&name);
                    check_principal_name(&name).map_err(|p| ctx.err(&key, p))?;
                    principals.insert(name, entry);
                }
            }
            other => {
                return Err(ctx.err(other, "unknown key (expected `defaults` or `principals`)"));
            }
        }
    }
    // Principals after the whole file was read, so that [defaults] may come after them.
    let mut parsed = BTreeMap::new();
    for (name, entry) in principals {
        let rights = principal(&ctx, &name, entry, defaults)?;
        parsed.insert(name, Arc::new(rights));
    }
    Ok(Policy {
        name: file.to_owned(),
        defaults,
        principals: parsed,
    })
}

fn check_principal_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a principal name must not be empty");
    }
    if name.trim() != name {
        return Err("a principal name must not start or end with spaces");
    }
    if name.chars().any(char::is_control) {
        return Err("a principal name must not contain control characters");
    }
    if name.len() > 1024 {
        return Err("a principal name must be at most 1024 bytes");
    }
    Ok(())
}

fn limits(ctx: &Ctx<'_>, key: &str, raw: &RawLimits, base: Limits) -> Result<Limits, AccessError> {
    let out = Limits {
        max_concurrent_requests: raw
            .max_concurrent_requests
            .unwrap_or(base.max_concurrent_requests),
        max_watch_streams: raw.max_watch_streams.unwrap_or(base.max_watch_streams),
    };
    if out.max_concurrent_requests == 0 {
        return Err(ctx.err(
            &format!("{key}.max_concurrent_requests"),
            "must be at least 1",
        ));
    }
    if out.max_watch_streams == 0 {
        return Err(ctx.err(
            &format!("{key}.max_watch_streams"),
            "must be at least 1 (grant no WatchChanges instead)",
        ));
    }
    Ok(out)
}

fn principal(
    ctx: &Ctx<'_>,
    name: &str,
    entry: toml::Value,
    defaults: Limits,
) -> Result<PrincipalRights, AccessError> {
    let base = principal_key(name);
    let toml::Value::Table(fields) = entry else {
        return Err(ctx.err(
            &base,
            "must be a table (operator, peer, send, read, limits)",
        ));
    };
    let mut operator = false;
    let mut peer = false;
    let mut send = None;
    let mut read = None;
    let mut lim = defaults;
    for (key, value) in fields {
        let here = format!("{base}.{key}");
        match key.as_str() {
            "operator" => {
                operator = value
                    .as_bool()
                    .ok_or_else(|| ctx.err(&here, "must be true or false"))?;
            }
            "peer" => {
                peer = value
                    .as_bool()
                    .ok_or_else(|| ctx.err(&here, "must be true or false"))?;
            }
            "send" => send = Some(send_rights(ctx, &here, ctx.section(&here, value)?)?),
            "read" => read = Some(read_rights(ctx, &here, ctx.section(&here, value)?)?),
            "limits" => {
                let raw: RawLimits = ctx.section(&here, value)?;
                lim = limits(ctx, &here, &raw, defaults)?;
            }
            _ => {
                return Err(ctx.err(
                    &here,
                    "unknown key (expected `operator`, `peer`, `send`, `read` or `limits`)",
                ));
            }
        }
    }
    let read = read.unwrap_or_else(ReadRights::none);
    if read.rpcs.contains(&Rpc::ListParked) && !operator {
        return Err(ctx.err(
            &format!("{base}.read.rpcs"),
            "ListParked is for operators only: set `operator = true` for this principal or remove it",
        ));
    }
    Ok(PrincipalRights {
        name: Arc::from(name),
        operator,
        peer,
        send,
        read,
        limits: lim,
    })
}

fn send_rights(ctx: &Ctx<'_>, key: &str, raw: RawSend) -> Result<SendRights, AccessError> {
    let adapter = Adapter::parse(&raw.adapter).ok_or_else(|| {
        ctx.err(
            &format!("{key}.adapter"),
            format!(
                "{:?} is not an adapter (expected education, health or assistance)",
                raw.adapter
            ),
        )
    })?;
    if raw.records.is_empty() {
        return Err(ctx.err(
            &format!("{key}.records"),
            "name at least one record kind (or remove `send`)",
        ));
    }
    let mut records = BTreeSet::new();
    for (i, name) in raw.records.iter().enumerate() {
        let here = format!("{key}.records[{i}]");
        let expected = || {
            RecordKind::ALL
                .into_iter()
                .filter(|k| k.accepted_by(adapter))
                .map(RecordKind::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let kind = RecordKind::parse(name).ok_or_else(|| {
            ctx.err(
                &here,
                format!(
                    "{name:?} is not a record kind (the {adapter} adapter takes {})",
                    expected()
                ),
            )
        })?;
        if !kind.accepted_by(adapter) {
            let to: Vec<&str> = kind.adapters().iter().map(|a| a.as_str()).collect();
            return Err(ctx.err(
                &here,
                format!(
                    "{kind} records go to the {} adapter, not the {adapter} adapter (which takes {})",
                    to.join(" or "),
                    expected()
                ),
            ));
        }
        if !records.insert(kind) {
            return Err(ctx.err(&here, format!("{kind} is listed twice")));
        }
    }
    check_source_system(&raw.source_system)
        .map_err(|p| ctx.err(&format!("{key}.source_system"), p))?;
    Ok(SendRights {
        adapter,
        records,
        source_system: SourceSystem(Arc::from(raw.source_system.as_str())),
    })
}

/// A source system name starts every record id it sends (`<source_system>:…`) and goes in a
/// Kafka header: lower-case letters, digits, `-`, `_` and `.`, at most 64.
fn check_source_system(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?}: must be 1 to 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?}: {c:?} is not allowed (lower-case letters, digits, '-', '_' and '.' only)"
        ));
    }
    Ok(())
}

fn read_rights(ctx: &Ctx<'_>, key: &str, raw: RawRead) -> Result<ReadRights, AccessError> {
    let mut rpcs = BTreeSet::new();
    for (i, name) in raw.rpcs.iter().enumerate() {
        let here = format!("{key}.rpcs[{i}]");
        let rpc = Rpc::parse(name).ok_or_else(|| {
            ctx.err(
                &here,
                format!(
                    "{name:?} is not a method (expected {})",
                    Rpc::ALL.map(Rpc::as_str).join(", ")
                ),
            )
        })?;
        if !rpcs.insert(rpc) {
            return Err(ctx.err(&here, format!("{rpc} is listed twice")));
        }
    }
    let mut scopes = Vec::new();
    for (i, text) in raw.scopes.iter().enumerate() {
        let here = format!("{key}.scopes[{i}]");
        let scope = Scope::parse(text).map_err(|p| ctx.err(&here, p))?;
        if scopes.contains(&scope) {
            return Err(ctx.err(&here, format!("{scope} is listed twice")));
        }
        scopes.push(scope);
    }
    let conditionalities = conditionalities(ctx, key, &raw.conditionalities)?;
    let reads_views = rpcs.iter().any(|r| r.reads_views());
    if reads_views && scopes.is_empty() {
        return Err(ctx.err(
            &format!("{key}.scopes"),
            "required with any method but ListParked: federal, state:<UF> or municipality:<IBGE code>",
        ));
    }
    if reads_views && conditionalities == Conditionalities::Only(BTreeSet::new()) {
        return Err(ctx.err(
            &format!("{key}.conditionalities"),
            "required with any method but ListParked: [\"all\"] or rule-set ids such as \"education\"",
        ));
    }
    Ok(ReadRights {
        scopes,
        rpcs,
        conditionalities,
    })
}

fn conditionalities(
    ctx: &Ctx<'_>,
    key: &str,
    raw: &[String],
) -> Result<Conditionalities, AccessError> {
    if raw.iter().any(|c| c == "all") {
        if raw.len() > 1 {
            return Err(ctx.err(
                &format!("{key}.conditionalities"),
                "\"all\" stands alone: write [\"all\"] or list the ids",
            ));
        }
        return Ok(Conditionalities::All);
    }
    let mut ids = BTreeSet::new();
    for (i, id) in raw.iter().enumerate() {
        let here = format!("{key}.conditionalities[{i}]");
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(ctx.err(
                &here,
                format!("{id:?} is not a conditionality id (letters, digits, '-', '_', '.')"),
            ));
        }
        if !ids.insert(id.clone()) {
            return Err(ctx.err(&here, format!("{id:?} is listed twice")));
        }
    }
    Ok(Conditionalities::Only(ids))
}

// ---------------------------------------------------------------------------------------------
// Development policy
// ---------------------------------------------------------------------------------------------

/// The access policy for the development PKI's principals ([`DEV_PRINCIPALS`]): the three
/// sector systems each sending their own records, a federal, a state (São Paulo) and a
/// municipal (São Paulo city, 3550308) reader, an operator, and the reconciler's instances
/// (peers). For local runs and tests only.
pub fn dev_policy_toml() -> &'static str {
    DEV_POLICY
}

const DEV_POLICY: &str = r#"# Ponte access policy for the development PKI (`ponte pki dev`). Not for production.
# Format: docs/security.md, "The access policy file".

[defaults]
max_concurrent_requests = 64
max_watch_streams = 2

# Sector systems: each sends its own records, under its own source system, and reads nothing.

[principals."urn:ponte:principal:education"]
send = { adapter = "education", records = ["attendance", "household-evidence"], source_system = "education" }

[principals."urn:ponte:principal:health"]
send = { adapter = "health", records = ["health", "household-evidence"], source_system = "health" }

[principals."urn:ponte:principal:assistance"]
send = { adapter = "assistance", records = ["person", "scfv", "follow-up", "appeal", "household-profile", "household-evidence"], source_system = "assistance" }

# Readers: the federal ministry sees everything; a state its municipalities; a municipality itself.

[principals."urn:ponte:principal:federal"]
read = { scopes = ["federal"], rpcs = ["GetPerson", "GetFamily", "ListPersons", "GetIndicators", "WatchChanges", "GetHousehold", "GetHouseholdIndicators"], conditionalities = ["all"] }
limits = { max_concurrent_requests = 256, max_watch_streams = 4 }

[principals."urn:ponte:principal:state-sp"]
read = { scopes = ["state:SP"], rpcs = ["GetPerson", "GetFamily", "ListPersons", "GetIndicators", "WatchChanges"], conditionalities = ["all"] }

[principals."urn:ponte:principal:municipality-3550308"]
read = { scopes = ["municipality:3550308"], rpcs = ["GetPerson", "GetFamily", "ListPersons", "GetIndicators", "WatchChanges"], conditionalities = ["all"] }

# The operator lists parked health records (raw CNS/CPF) and carries out the controller's
# erasure orders (`ponte erase`); it reads no view.

[principals."urn:ponte:principal:operator"]
operator = true
read = { rpcs = ["ListParked"] }
send = { adapter = "assistance", records = ["erasure"], source_system = "operator" }

# The reconciler's instances: each reads from the others the views of the partitions they own,
# unfiltered, to answer its own callers with their grants applied (and audited there).

[principals."urn:ponte:principal:reconciler"]
peer = true
limits = { max_concurrent_requests = 256 }
"#;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::from_toml_str("policy.toml", text).unwrap()
    }

    fn error(text: &str) -> String {
        Policy::from_toml_str("policy.toml", text)
            .unwrap_err()
            .to_string()
    }

    fn ibge(code: &str) -> IbgeMunicipality {
        IbgeMunicipality::parse(code).unwrap()
    }

    #[test]
    fn uf_table_matches_the_domain_codes() {
        let mut codes: Vec<u8> = UFS.iter().map(|&(_, c)| c).collect();
        codes.sort_unstable();
        assert_eq!(codes, ponte_domain::ids::UF_CODES);
        assert_eq!(uf_code("SP"), Some(35));
        assert_eq!(uf_code("DF"), Some(53));
        assert_eq!(uf_code("XX"), None);
    }

    #[test]
    fn every_kind_goes_to_one_adapter_but_household_evidence_to_each_sectors() {
        for kind in RecordKind::ALL {
            let adapters = kind.adapters();
            if kind == RecordKind::HouseholdEvidence {
                assert_eq!(adapters.len(), Adapter::ALL.len(), "{kind}");
            } else {
                assert_eq!(adapters.len(), 1, "{kind}");
            }
            for a in Adapter::ALL {
                assert_eq!(kind.accepted_by(a), adapters.contains(&a), "{kind} {a}");
            }
        }
    }

    #[test]
    fn dev_policy_parses_and_names_every_dev_principal() {
        let p = policy(dev_policy_toml());
        let names: Vec<&str> = p.principals().collect();
        for short in DEV_PRINCIPALS {
            assert!(names.contains(&dev_principal(short).as_str()), "{short}");
        }
        assert_eq!(names.len(), DEV_PRINCIPALS.len());
    }

    #[test]
    fn dev_policy_rights() {
        let p = policy(dev_policy_toml());
        let education = dev_principal("education");
        let assistance = dev_principal("assistance");
        let health = dev_principal("health");
        assert_eq!(
            p.may_send(&education, Adapter::Education, RecordKind::Attendance)
                .unwrap()
                .as_str(),
            "education"
        );
        assert!(matches!(
            p.may_send(&education, Adapter::Assistance, RecordKind::Person),
            Err(Denied::Adapter { .. })
        ));
        assert!(
            p.may_send(&health, Adapter::Health, RecordKind::Health)
                .is_ok()
        );
        for kind in [
            RecordKind::Person,
            RecordKind::Scfv,
            RecordKind::FollowUp,
            RecordKind::Appeal,
            RecordKind::HouseholdProfile,
            RecordKind::HouseholdEvidence,
        ] {
            assert_eq!(
                p.may_send(&assistance, Adapter::Assistance, kind)
                    .unwrap()
                    .as_str(),
                "assistance"
            );
        }
        // Household evidence (Unidos): each sector sends its own source's to its own adapter,
        // under its own source system, and to no other adapter.
        for (who, adapter) in [
            (&education, Adapter::Education),
            (&health, Adapter::Health),
            (&assistance, Adapter::Assistance),
        ] {
            assert_eq!(
                p.may_send(who, adapter, RecordKind::HouseholdEvidence)
                    .unwrap()
                    .as_str(),
                adapter.as_str()
            );
        }
        assert!(matches!(
            p.may_send(&education, Adapter::Health, RecordKind::HouseholdEvidence),
            Err(Denied::Adapter { .. })
        ));
        assert!(matches!(
            p.may_send(&education, Adapter::Education, RecordKind::HouseholdProfile),
            Err(Denied::RecordKind { .. })
        ));
        // Senders read nothing.
        for rpc in Rpc::ALL {
            assert!(p.may_call(&education, rpc).is_err());
        }
        // Only the operator orders erasures, under a source system of its own.
        let operator = dev_principal("operator");
        assert_eq!(
            p.may_send(&operator, Adapter::Assistance, RecordKind::Erasure)
                .unwrap()
                .as_str(),
            "operator"
        );
        assert!(matches!(
            p.may_send(&assistance, Adapter::Assistance, RecordKind::Erasure),
            Err(Denied::RecordKind { .. })
        ));
        assert!(matches!(
            p.may_send(&operator, Adapter::Assistance, RecordKind::Person),
            Err(Denied::RecordKind { .. })
        ));

        let federal = p
            .may_call(&dev_principal("federal"), Rpc::GetPerson)
            .unwrap();
        assert!(federal.is_federal());
        assert!(federal.covers_municipality(&ibge("3304557")));
        assert!(federal.covers_municipality(&IbgeMunicipality::NONE));
        assert!(federal.covers_municipality_code(""));
        assert!(federal.covers_conditionality("health"));
        assert!(
            p.may_call(&dev_principal("federal"), Rpc::ListParked)
                .is_err()
        );

        let sp = p
            .may_call(&dev_principal("state-sp"), Rpc::ListPersons)
            .unwrap();
        assert!(sp.covers_municipality(&ibge("3550308")));
        assert!(sp.covers_municipality(&ibge("3509502"))); // Campinas
        assert!(!sp.covers_municipality(&ibge("3304557"))); // Rio de Janeiro
        assert!(!sp.covers_municipality(&IbgeMunicipality::NONE));
        assert!(!sp.covers_municipality_code(""));
        assert!(sp.covers_municipality_code("3550308"));

        let city = p
            .may_call(&dev_principal("municipality-3550308"), Rpc::WatchChanges)
            .unwrap();
        assert!(city.covers_municipality(&ibge("3550308")));
        assert!(!city.covers_municipality(&ibge("3509502")));
        assert_eq!(city.limits(), Limits::default());

        let op = p
            .may_call(&dev_principal("operator"), Rpc::ListParked)
            .unwrap();
        assert!(op.is_operator());
        assert!(
            p.may_call(&dev_principal("operator"), Rpc::GetPerson)
                .is_err()
        );
        assert!(
            p.may_call(&dev_principal("state-sp"), Rpc::ListParked)
                .is_err()
        );
        assert_eq!(
            p.limits(&dev_principal("federal")),
            Some(Limits {
                max_concurrent_requests: 256,
                max_watch_streams: 4
            })
        );

        // Only the reconciler's instances read each other's partitions, and they call no
        // method of the public API.
        let reconciler = dev_principal("reconciler");
        assert_eq!(p.may_peer(&reconciler), Ok(()));
        assert!(p.may_call(&reconciler, Rpc::GetPerson).is_err());
        for other in DEV_PRINCIPALS.iter().filter(|n| **n != "reconciler") {
            assert!(
                matches!(
                    p.may_peer(&dev_principal(other)),
                    Err(Denied::NotPeer { .. })
                ),
                "{other}"
            );
        }
        assert!(matches!(
            p.may_peer("urn:ponte:principal:nobody"),
            Err(Denied::UnknownPrincipal { .. })
        ));
    }

    #[test]
    fn unknown_principal_and_empty_policy_deny_everything() {
        let p = policy("");
        assert!(matches!(
            p.may_send("urn:x", Adapter::Education, RecordKind::Attendance),
            Err(Denied::UnknownPrincipal { .. })
        ));
        for rpc in Rpc::ALL {
            assert!(matches!(
                p.may_call("urn:x", rpc),
                Err(Denied::UnknownPrincipal { .. })
            ));
        }
        let p = policy(dev_policy_toml());
        assert!(
            p.may_call("urn:ponte:principal:nobody", Rpc::GetPerson)
                .is_err()
        );
        // A principal with no rights at all is allowed in the file and may do nothing.
        let p = policy("[principals.\"urn:x\"]\n");
        assert!(p.may_call("urn:x", Rpc::GetPerson).is_err());
        assert!(
            p.may_send("urn:x", Adapter::Health, RecordKind::Health)
                .is_err()
        );
    }

    #[test]
    fn denial_echoes_a_bounded_principal() {
        let long = "x".repeat(10_000);
        let text = policy("")
            .may_call(&long, Rpc::GetPerson)
            .unwrap_err()
            .to_string();
        assert!(text.len() < 400, "{}", text.len());
    }

    #[test]
    fn kind_must_match_the_adapter_asked() {
        let p = policy(dev_policy_toml());
        // The service asks with its own adapter: a kind of another adapter is refused.
        assert!(matches!(
            p.may_send(
                &dev_principal("assistance"),
                Adapter::Assistance,
                RecordKind::Attendance
            ),
            Err(Denied::RecordKind { .. })
        ));
        let p = policy(
            r#"[principals.a]
send = { adapter = "assistance", records = ["scfv"], source_system = "cras-sp" }"#,
        );
        assert!(matches!(
            p.may_send("a", Adapter::Assistance, RecordKind::Person),
            Err(Denied::RecordKind { .. })
        ));
        assert_eq!(
            p.may_send("a", Adapter::Assistance, RecordKind::Scfv)
                .unwrap()
                .as_str(),
            "cras-sp"
        );
    }

    #[test]
    fn conditionalities_filter() {
        let p = policy(
            r#"[principals.edu-sec]
read = { scopes = ["municipality:3550308", "municipality:3509502"], rpcs = ["ListPersons"], conditionalities = ["education"] }"#,
        );
        let g = p.may_call("edu-sec", Rpc::ListPersons).unwrap();
        assert!(g.covers_conditionality("education"));
        assert!(!g.covers_conditionality("health"));
        assert!(g.covers_municipality(&ibge("3509502")));
        assert!(!g.covers_municipality(&ibge("3304557")));
        assert!(p.may_call("edu-sec", Rpc::GetPerson).is_err());
        assert!(p.check_conditionalities(&["education", "health"]).is_ok());
        let e = p
            .check_conditionalities(&["school"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("principals.\"edu-sec\".read.conditionalities[0]"),
            "{e}"
        );
    }

    #[test]
    fn limits_defaults_and_overrides() {
        let p = policy(
            r#"[principals.a]
limits = { max_watch_streams = 7 }

[defaults]
max_concurrent_requests = 10
"#,
        );
        assert_eq!(
            p.limits("a"),
            Some(Limits {
                max_concurrent_requests: 10,
                max_watch_streams: 7
            })
        );
        assert_eq!(
            p.default_limits().max_watch_streams,
            DEFAULT_MAX_WATCH_STREAMS
        );
        assert!(
            error("[defaults]\nmax_concurrent_requests = 0\n")
                .contains("defaults.max_concurrent_requests: must be at least 1")
        );
        assert!(error("[defaults]\nmax_concurrent_requests = -1\n").contains("defaults"));
    }

    #[test]
    fn errors_name_the_file_the_principal_and_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "[principals.\"urn:a\"]\nreed = {}\n",
                "policy.toml: principals.\"urn:a\".reed: unknown key",
            ),
            (
                "[principals.\"urn:a\".read]\nrpcs = [\"GetPerson\"]\nscope = [\"federal\"]\n",
                "policy.toml: principals.\"urn:a\".read: unknown field `scope`",
            ),
            (
                "[principals.a.send]\nadapter = \"education\"\nrecords = [\"attendance\"]\nsource_system = \"e\"\nextra = 1\n",
                "principals.\"a\".send: unknown field `extra`",
            ),
            (
                "[principals.a.limits]\nmax_streams = 1\n",
                "principals.\"a\".limits: unknown field `max_streams`",
            ),
            (
                "[defaults]\nmax = 1\n",
                "policy.toml: defaults: unknown field `max`",
            ),
            ("[principal.a]\n", "policy.toml: principal: unknown key"),
            (
                "[principals.a]\nread = { scopes = [\"state:XX\"], rpcs = [\"GetPerson\"], conditionalities = [\"all\"] }\n",
                "principals.\"a\".read.scopes[0]: \"XX\" is not a Brazilian state",
            ),
            (
                "[principals.a]\nread = { scopes = [\"state:sp\"], rpcs = [\"GetPerson\"], conditionalities = [\"all\"] }\n",
                "write the UF in capitals, e.g. state:SP",
            ),
            (
                "[principals.a]\nread = { scopes = [\"federal\", \"municipality:3550309\"], rpcs = [\"GetPerson\"], conditionalities = [\"all\"] }\n",
                "principals.\"a\".read.scopes[1]: municipality \"3550309\": IBGE municipality code check digit mismatch",
            ),
            (
                "[principals.a]\nread = { scopes = [\"municipality:355030\"], rpcs = [\"GetPerson\"], conditionalities = [\"all\"] }\n",
                "is 7 digits",
            ),
            (
                "[principals.a]\nread = { scopes = [\"municipality:1000008\"], rpcs = [\"GetPerson\"], conditionalities = [\"all\"] }\n",
                "unknown state (UF) prefix 10",
            ),
            (
                "[principals.a]\nread = { scopes = [\"national\"], rpcs = [\"GetPerson\"], conditionalities = [\"all\"] }\n",
                "\"national\" is not a scope",
            ),
            (
                "[principals.a]\nread = { rpcs = [\"GetPerson\"], conditionalities = [\"all\"] }\n",
                "principals.\"a\".read.scopes: required",
            ),
            (
                "[principals.a]\nread = { scopes = [\"federal\"], rpcs = [\"GetPerson\"] }\n",
                "principals.\"a\".read.conditionalities: required",
            ),
            (
                "[principals.a]\nread = { scopes = [\"federal\"], rpcs = [\"GetPerson\"], conditionalities = [\"all\", \"health\"] }\n",
                "\"all\" stands alone",
            ),
            (
                "[principals.a]\nread = { scopes = [\"federal\"], rpcs = [\"getperson\"], conditionalities = [\"all\"] }\n",
                "principals.\"a\".read.rpcs[0]: \"getperson\" is not a method",
            ),
            (
                "[principals.a]\nread = { rpcs = [\"ListParked\"] }\n",
                "principals.\"a\".read.rpcs: ListParked is for operators only",
            ),
            (
                "[principals.a]\npeer = 1\n",
                "principals.\"a\".peer: must be true or false",
            ),
            (
                "[principals.a]\noperator = \"yes\"\n",
                "principals.\"a\".operator: must be true or false",
            ),
            (
                "[principals.a]\nsend = { adapter = \"education\", records = [\"person\"], source_system = \"e\" }\n",
                "principals.\"a\".send.records[0]: person records go to the assistance adapter, not the education adapter (which takes attendance, household-evidence)",
            ),
            (
                "[principals.a]\nsend = { adapter = \"health\", records = [\"household-profile\"], source_system = \"e\" }\n",
                "principals.\"a\".send.records[0]: household-profile records go to the assistance adapter, not the health adapter (which takes health, household-evidence)",
            ),
            (
                "[principals.a]\nsend = { adapter = \"school\", records = [\"attendance\"], source_system = \"e\" }\n",
                "principals.\"a\".send.adapter: \"school\" is not an adapter",
            ),
            (
                "[principals.a]\nsend = { adapter = \"assistance\", records = [\"follow_up\"], source_system = \"e\" }\n",
                "\"follow_up\" is not a record kind (the assistance adapter takes person, scfv, follow-up, appeal, erasure, household-profile, household-evidence)",
            ),
            (
                "[principals.a]\nsend = { adapter = \"health\", records = [], source_system = \"e\" }\n",
                "principals.\"a\".send.records: name at least one",
            ),
            (
                "[principals.a]\nsend = { adapter = \"health\", records = [\"health\"] }\n",
                "principals.\"a\".send: missing field `source_system`",
            ),
            (
                "[principals.a]\nsend = { adapter = \"health\", records = [\"health\"], source_system = \"Health:x\" }\n",
                "principals.\"a\".send.source_system: \"Health:x\": 'H' is not allowed",
            ),
            (
                "[principals.\" a\"]\n",
                "principals.\" a\": a principal name must not start or end with spaces",
            ),
            (
                "principals = 1\n",
                "policy.toml: principals: must be a table",
            ),
        ];
        for (text, expected) in cases {
            let e = error(text);
            assert!(e.contains(expected), "{text}\n→ {e}\n  expected {expected}");
            assert!(e.starts_with("access policy: policy.toml: "), "{e}");
        }
        // A syntax error names the file and the line.
        let e = error("[principals.a\n");
        assert!(e.contains("policy.toml") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn shared_policy_keeps_the_old_one_on_a_bad_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, dev_policy_toml()).unwrap();
        let shared = SharedPolicy::load(&path).unwrap();
        let other = shared.clone();
        let held = shared.current();
        assert!(
            shared
                .may_call(&dev_principal("federal"), Rpc::GetPerson)
                .is_ok()
        );

        std::fs::write(&path, "[principals.\"urn:a\"]\nreed = {}\n").unwrap();
        let e = shared.reload(&path).unwrap_err().to_string();
        assert!(e.contains("reed"), "{e}");
        assert!(
            other
                .may_call(&dev_principal("federal"), Rpc::GetPerson)
                .is_ok()
        );

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            shared.reload(&path),
            Err(AccessError::File { .. })
        ));
        assert!(
            other
                .may_call(&dev_principal("federal"), Rpc::GetPerson)
                .is_ok()
        );

        std::fs::write(&path, "[principals.\"urn:a\"]\n").unwrap();
        shared.reload(&path).unwrap();
        // Every handle sees the new policy; one taken before keeps the old.
        assert!(
            other
                .may_call(&dev_principal("federal"), Rpc::GetPerson)
                .is_err()
        );
        assert!(
            held.may_call(&dev_principal("federal"), Rpc::GetPerson)
                .is_ok()
        );
    }

    /// The example of docs/security.md, "The access policy file".
    const DOCUMENTED_EXAMPLE: &str = r#"[defaults]                       # optional; these are the built-in values
max_concurrent_requests = 64
max_watch_streams = 2

# A sector system: sends its own records, reads nothing.
[principals."urn:ponte:principal:education"]
send = { adapter = "education", records = ["attendance"], source_system = "education" }

[principals."urn:ponte:principal:assistance"]
send = { adapter = "assistance", records = ["person", "scfv", "follow-up", "appeal"], source_system = "assistance" }

# A state's coordination: every municipality of São Paulo, education outcomes only.
[principals."urn:ponte:principal:state-sp-education"]
read = { scopes = ["state:SP"], rpcs = ["GetPerson", "ListPersons", "GetIndicators"], conditionalities = ["education"] }
limits = { max_concurrent_requests = 16 }

# Two municipalities' case management, every conditionality, following changes.
[principals."urn:ponte:principal:case-management-abc"]
read = { scopes = ["municipality:3547809", "municipality:3548708"], rpcs = ["GetPerson", "GetFamily", "ListPersons", "WatchChanges"], conditionalities = ["all"] }

# An operator: parked health records, nothing else.
[principals."urn:ponte:principal:operator"]
operator = true
read = { rpcs = ["ListParked"] }
"#;

    #[test]
    fn documented_example_parses() {
        let p = policy(DOCUMENTED_EXAMPLE);
        let g = p
            .may_call("urn:ponte:principal:state-sp-education", Rpc::GetIndicators)
            .unwrap();
        assert!(g.covers_conditionality("education") && !g.covers_conditionality("health"));
        assert_eq!(g.limits().max_concurrent_requests, 16);
        let g = p
            .may_call("urn:ponte:principal:case-management-abc", Rpc::WatchChanges)
            .unwrap();
        assert!(g.covers_municipality(&ibge("3548708")));
        assert!(!g.covers_municipality(&ibge("3550308")));
    }

    #[test]
    fn scope_display_round_trips() {
        for text in ["federal", "state:SP", "state:DF", "municipality:3550308"] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
    }
}
