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

/// Encoded `FileDescriptorSet` of every Ponte proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ponte_descriptor.bin"));

/// Schema name carried in the `ponte-schema` Kafka header.
pub const EVENTS_SCHEMA: &str = "ponte.events.v1";

pub use prost_types::Timestamp;
