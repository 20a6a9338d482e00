//! Protobuf messages and gRPC services between the server, node agents and node proxies.
//!
//! Generated code only: `agent::v1` (node registration, heartbeats, allocation watch and status)
//! and `discovery::v1` (the xDS-style resource stream to node proxies). The `.proto` files next
//! to this crate are the source of truth.

#![allow(clippy::all, missing_docs)] // generated code: lints apply to what we write, not to prost's output

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("flotilla.agent.v1");
    }
}

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("flotilla.discovery.v1");

        /// Type URL of [`Cluster`] resources.
        pub const CLUSTER_TYPE: &str = "type.flotilla.dev/flotilla.discovery.v1.Cluster";
        /// Type URL of [`Route`] resources.
        pub const ROUTE_TYPE: &str = "type.flotilla.dev/flotilla.discovery.v1.Route";
    }
}
