//! L4 forwarding (in progress).
