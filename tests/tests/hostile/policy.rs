//! Hostile admin input and policies: names that try to steer the upstream URL, credential
//! references that reach for secrets, snapshots that must not freeze a data plane.
