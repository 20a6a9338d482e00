//! The mesh certificate authority (in progress).
