//! Rust types generated from Ponte's protobuf contract (`proto/` at the repository root).
//!
//! This crate holds generated code only: no logic, no I/O. The contract itself, with a comment
//! on every message and field for sector integrators, lives in the `.proto` files.
#![allow(unreachable_pub, missing_debug_implementations, clippy::all)]

/// Bus events: the envelope and the sector records (`ponte.events.v1`).
pub mod events {
    pub mod v1 {
        tonic::include_proto!("ponte.events.v1");
    }
}

/// The gRPC compliance query API (`ponte.compliance.v1`).
pub mod compliance {
    pub mod v1 {
        tonic::include_proto!("ponte.compliance.v1");
    }
}

/// The reconciler's internal wire formats (`ponte.reconciler.v1`): repartition messages and
/// the digests it keeps of published views.
pub mod reconciler {
    pub mod v1 {
        tonic::include_proto!("ponte.reconciler.v1");
    }
}

/// The audit log's entries (`ponte.audit.v1`), written by every service.
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("ponte.audit.v1");
    }
}

/// The `ponte-schema` header of audit entries.
pub const AUDIT_SCHEMA: &str = "ponte.audit.v1";

/// Encoded `FileDescriptorSet` of Ponte's public protos (events and the compliance API), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ponte_descriptor.bin"));

/// Schema name carried in the `ponte-schema` Kafka header.
pub const EVENTS_SCHEMA: &str = "ponte.events.v1";

/// The `ponte-schema` header of the reconciler's repartition messages.
pub const RECONCILER_SCHEMA: &str = "ponte.reconciler.v1";

pub use prost_types::Timestamp;
