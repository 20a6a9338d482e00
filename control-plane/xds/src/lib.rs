//! The discovery server: what each node proxy must know, pushed as it changes.
//!
//! For every node, [`resources_for_node`] computes from a store snapshot the clusters (each
//! service with its instances: healthy or not, local to the node or reached through the other
//! node's proxy) and the ingress routes (Fabio-style `urlprefix-<host>/<path>` tags), and from the
//! config entries ([`chain`]) each cluster's policy, the resolver subsets' clusters and the route
//! tables of HTTP services. The gRPC
//! [`DiscoveryServer`] streams them xDS-style, state of the world per type: every response has a
//! version and a nonce; the proxy ACKs what it applied or NACKs with a reason (logged, and the
//! version is not re-sent until the resources change again). Bursts of store changes are
//! debounced so a rollout does not become a storm of pushes.

pub mod chain;
mod compute;
mod stream;

pub use compute::{Resources, resources_for_node, routes_from_tags};
pub use stream::DiscoveryServer;
