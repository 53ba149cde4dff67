//! The edge's decisions for tonic handlers: `UNAUTHENTICATED` without valid credentials,
//! `PERMISSION_DENIED` outside the principal's rights, `RESOURCE_EXHAUSTED` over its limits.
use ponte_access::policy::{Grant, Rpc};
use tonic::{Request, Status};

use crate::gate::{Caller, Gate, Permit};
use crate::listener::PeerInfo;

/// An admitted call: what it may see, and its request slot (hold it until the answer is built).
#[derive(Debug)]
pub struct Admitted {
    /// The caller.
    pub caller: Caller,
    /// What the answer may show.
    pub grant: Grant,
    /// The caller's request slot.
    pub permit: Permit,
}

/// Authenticates the caller of `req` to `endpoint` (a refusal is recorded with it).
pub fn caller<T>(gate: &Gate, req: &Request<T>, endpoint: &str) -> Result<Caller, Status> {
    let peer = req.extensions().get::<PeerInfo>();
    let authorization = req
        .metadata()
        .get("authorization")
        .map(|v| v.as_bytes().to_vec());
    gate.authenticate(peer, authorization.as_deref())
        .map_err(|e| {
            gate.refused("", e.reason(), endpoint);
            Status::unauthenticated(e.to_string())
        })
}

/// Authenticates the caller of `req`, checks it may call `rpc` and takes its request slot.
pub fn admit<T>(gate: &Gate, req: &Request<T>, rpc: Rpc) -> Result<Admitted, Status> {
    let caller = caller(gate, req, rpc.as_str())?;
    let grant = gate
        .policy()
        .may_call(&caller.principal, rpc)
        .map_err(|d| {
            gate.forbidden(&caller.principal, rpc.as_str());
            Status::permission_denied(d.to_string())
        })?;
    let permit = gate.admit(&caller).map_err(|b| {
        gate.refused(&caller.principal, b.reason(), rpc.as_str());
        Status::resource_exhausted(b.to_string())
    })?;
    Ok(Admitted {
        caller,
        grant,
        permit,
    })
}

/// Authenticates the caller of `req` to `endpoint` of an instance's peer service, checks it is
/// a peer of the policy (`peer = true`) that came with a client certificate (or on an insecure
/// listener, where nothing does), and takes its request slot.
pub fn admit_peer<T>(
    gate: &Gate,
    req: &Request<T>,
    endpoint: &str,
) -> Result<(Caller, Permit), Status> {
    let caller = caller(gate, req, endpoint)?;
    if caller.method == crate::gate::AuthMethod::Bearer {
        gate.forbidden(&caller.principal, endpoint);
        return Err(Status::permission_denied(
            "peer reads take the instance's client certificate, not a bearer token",
        ));
    }
    gate.policy().may_peer(&caller.principal).map_err(|d| {
        gate.forbidden(&caller.principal, endpoint);
        Status::permission_denied(d.to_string())
    })?;
    let permit = gate.admit(&caller).map_err(|b| {
        gate.refused(&caller.principal, b.reason(), endpoint);
        Status::resource_exhausted(b.to_string())
    })?;
    Ok((caller, permit))
}

/// The answer for a view the grant does not cover, or that does not exist, to a caller who
/// may not learn which: the same status either way.
pub fn out_of_scope(what: &str) -> Status {
    Status::permission_denied(format!(
        "{what}: not in the caller's scope (or not in the view)"
    ))
}
