//! Protobuf messages and gRPC services between the server, node agents and node proxies.
//!
//! Generated code only: `agent::v1` (node registration, heartbeats, allocation watch and status)
//! `discovery::v1` (the xDS-style resource stream to node proxies), `ca::v1` (workload
//! certificate signing) and `demo::v1` (the example workload's echo service, for end-to-end
//! tests of the proxy's gRPC paths). The `.proto` files next to this crate are the source of
//! truth.

#![allow(clippy::all, missing_docs)] // generated code: lints apply to what we write, not to prost's output

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("flotilla.agent.v1");
    }
}

pub mod ca {
    pub mod v1 {
        tonic::include_proto!("flotilla.ca.v1");
    }
}

pub mod demo {
    pub mod v1 {
        tonic::include_proto!("flotilla.demo.v1");
    }
}

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("flotilla.discovery.v1");

        /// Type URL of [`Cluster`] resources.
        pub const CLUSTER_TYPE: &str = "type.flotilla.dev/flotilla.discovery.v1.Cluster";
        /// Type URL of [`Route`] resources.
        pub const ROUTE_TYPE: &str = "type.flotilla.dev/flotilla.discovery.v1.Route";
        /// Type URL of [`Listener`] resources (upstream listeners).
        pub const LISTENER_TYPE: &str = "type.flotilla.dev/flotilla.discovery.v1.Listener";
        /// Type URL of the [`TrustBundle`] resource.
        pub const TRUST_BUNDLE_TYPE: &str = "type.flotilla.dev/flotilla.discovery.v1.TrustBundle";
        /// Type URL of the [`Authorization`] resource.
        pub const AUTHORIZATION_TYPE: &str =
            "type.flotilla.dev/flotilla.discovery.v1.Authorization";
        /// Every type a proxy subscribes to.
        pub const ALL_TYPES: [&str; 5] = [
            CLUSTER_TYPE,
            ROUTE_TYPE,
            LISTENER_TYPE,
            TRUST_BUNDLE_TYPE,
            AUTHORIZATION_TYPE,
        ];
    }
}
