//! Optional NATS headers beyond docs/PROTOCOL.md's error headers (docs/PROTOCOL.md, "Server timing").
//!
//! Server timing: a client that sends [`TIMING_REQUEST`] (any value) on a request gets
//! [`SERVER_MICROS`] on the reply, so that it can tell the time the ledger held its
//! request from the time spent on the way (NATS, its own process). Asked for per
//! request, so that other clients' replies stay as they are.

/// Request header: asks for [`SERVER_MICROS`] on the reply.
pub const TIMING_REQUEST: &str = "Ledger-Timing";

/// Reply header: whole microseconds from the router taking the request off its
/// subscription to handing the reply to its NATS connection. It covers validation, the
/// shard writer's batch and its commit (and, with a router apart from the node, the hop
/// between them); it does not cover the request's or the reply's way through NATS.
pub const SERVER_MICROS: &str = "Ledger-Server-Micros";
