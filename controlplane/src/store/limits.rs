//! Rate limits and spend caps of tenants and keys, as stored, and as the lease book needs them.

use std::collections::HashMap;

use drover_proto::model::{Cap, Limits};

/// The limits and caps of one tenant or key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeConfig {
    pub limits: Limits,
    pub caps: Vec<Cap>,
}

/// Every tenant and key that has a limit or a cap, at one policy version. Suspended tenants,
/// revoked keys and deleted tenants are not in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitConfig {
    pub version: u64,
    /// By tenant id: the tenant's name (usage records carry names) and its limits.
    pub tenants: HashMap<u64, (String, ScopeConfig)>,
    /// By key id: the key's tenant id and its limits.
    pub keys: HashMap<String, (u64, ScopeConfig)>,
}
