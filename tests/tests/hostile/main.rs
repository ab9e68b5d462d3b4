//! The hostile-input suite: what callers, upstreams and networks can send to make Drover
//! misbehave (steer the upstream, grow memory, hold connections, multiply retries, act as a
//! confused deputy), each with the bound or refusal that stops it. Loopback only, bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod callers;
mod policy;
mod upstreams;
