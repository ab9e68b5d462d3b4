//! Gateway modules that can be switched on at runtime, and which of them this version implements.

use super::{InvalidPolicy, quoted};
use crate::pb;

/// The modules this version implements on the request path: the one list the admin API, the CLI
/// and the data plane consult. A module that is not here is recorded and distributed like any
/// other flag but changes nothing, so the admin API refuses to switch it on.
pub const AVAILABLE_MODULES: &[Module] = &[Module::Auth, Module::RateLimit, Module::SpendCap];

/// A gateway module that can be switched on at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    Auth,
    RateLimit,
    SpendCap,
    Audit,
    Redact,
}

impl Module {
    pub const ALL: [Module; 5] = [
        Module::Auth,
        Module::RateLimit,
        Module::SpendCap,
        Module::Audit,
        Module::Redact,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Module::Auth => "auth",
            Module::RateLimit => "rate_limit",
            Module::SpendCap => "spend_cap",
            Module::Audit => "audit",
            Module::Redact => "redact",
        }
    }

    /// Parses a module name; `rate-limit` is accepted for `rate_limit`.
    pub fn parse(name: &str) -> Result<Self, InvalidPolicy> {
        let normalized = name.replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == normalized)
            .ok_or_else(|| {
                InvalidPolicy::new(
                    "module",
                    format!(
                        "unknown module {}; expected one of {}",
                        quoted(name),
                        Self::ALL.map(Module::as_str).join(", ")
                    ),
                )
            })
    }

    /// Whether this version implements the module on the request path (it is in
    /// [`AVAILABLE_MODULES`]). Only an available module can be switched on.
    pub fn is_available(self) -> bool {
        AVAILABLE_MODULES.contains(&self)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The set of modules that are on. Anything not in the set, known or not, is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modules(u8);

impl Modules {
    pub fn is_enabled(self, module: Module) -> bool {
        self.0 & module.bit() != 0
    }

    pub fn set(&mut self, module: Module, enabled: bool) {
        if enabled {
            self.0 |= module.bit();
        } else {
            self.0 &= !module.bit();
        }
    }

    /// Every known module with its flag, in a stable order.
    pub fn to_wire(self) -> Vec<pb::Module> {
        Module::ALL
            .into_iter()
            .map(|m| pb::Module {
                name: m.as_str().to_owned(),
                enabled: self.is_enabled(m),
                available: m.is_available(),
            })
            .collect()
    }

    /// Flags from the wire. Module names this build does not know stay off.
    pub fn from_wire(modules: &[pb::Module]) -> Self {
        let mut set = Modules::default();
        for m in modules {
            if let Ok(module) = Module::parse(&m.name) {
                set.set(module, m.enabled);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Snapshot;
    use crate::model::test_support::snapshot;

    #[test]
    fn unknown_modules_stay_off() {
        let mut s = snapshot();
        s.modules.push(pb::Module {
            name: "telepathy".into(),
            enabled: true,
            available: true,
        });
        let s = Snapshot::try_from(&s).unwrap();
        for m in Module::ALL {
            assert_eq!(s.modules.is_enabled(m), m == Module::Auth);
        }
    }

    #[test]
    fn modules_not_implemented_are_unavailable() {
        for m in Module::ALL {
            assert_eq!(m.is_available(), AVAILABLE_MODULES.contains(&m));
        }
        let wire = Modules::default().to_wire();
        assert_eq!(wire.len(), Module::ALL.len());
        assert!(
            wire.iter()
                .all(|m| m.available == Module::parse(&m.name).unwrap().is_available())
        );
    }
}
