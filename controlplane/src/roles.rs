//! Who may call which `AdminService` RPC: the roles, the identities that hold them, and the one
//! table that decides (docs/admin-roles.md shows the same table; a test keeps them equal).
//!
//! Roles are ordered: `viewer` reads everything but secrets, `operator` also changes the
//! gateway's configuration (providers, routes, prices, modules, limits, caps), `admin` also
//! tenants, keys and admin identities. An identity scoped to a tenant may only call the RPCs
//! the table marks as tenant-scoped, and the handler of each holds the call to that tenant.

use std::fmt;

use drover_proto::pb;

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn from_wire(role: i32) -> Option<Role> {
        match pb::AdminRole::try_from(role).ok()? {
            pb::AdminRole::Viewer => Some(Role::Viewer),
            pb::AdminRole::Operator => Some(Role::Operator),
            pb::AdminRole::Admin => Some(Role::Admin),
            pb::AdminRole::Unspecified => None,
        }
    }

    pub fn to_wire(self) -> pb::AdminRole {
        match self {
            Role::Viewer => pb::AdminRole::Viewer,
            Role::Operator => pb::AdminRole::Operator,
            Role::Admin => pb::AdminRole::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tenant an identity is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope {
    pub id: i64,
    pub name: String,
    /// When the tenant was created: usage is kept by tenant name, and a name can belong to a
    /// deleted tenant before, so a scoped identity's usage starts here.
    pub created_unix_ms: i64,
}

/// An authenticated caller of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub tenant: Option<TenantScope>,
}

/// The name of the bootstrap token's identity.
pub const ROOT: &str = "root";

impl Identity {
    pub fn root() -> Identity {
        Identity {
            name: ROOT.to_owned(),
            role: Role::Admin,
            tenant: None,
        }
    }
}

/// Who may call one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub rpc: &'static str,
    /// Whether a successful call changes state (and so always leaves an audit record).
    pub changes: bool,
    /// The least role that may call it.
    pub least: Role,
    /// Whether an identity scoped to a tenant may call it (for that tenant only).
    pub scoped: bool,
}

const fn rule(rpc: &'static str, changes: bool, least: Role, scoped: bool) -> Rule {
    Rule {
        rpc,
        changes,
        least,
        scoped,
    }
}

use Role::{Admin, Operator, Viewer};

/// Every `AdminService` RPC, in the order of admin.proto.
pub const RULES: &[Rule] = &[
    rule("AddProvider", true, Operator, false),
    rule("ListProviders", false, Viewer, false),
    rule("RemoveProvider", true, Operator, false),
    rule("SetRoute", true, Operator, false),
    rule("ListRoutes", false, Viewer, false),
    rule("RemoveRoute", true, Operator, false),
    rule("SetPrice", true, Operator, false),
    rule("ListPrices", false, Viewer, false),
    rule("RemovePrice", true, Operator, false),
    rule("ListModules", false, Viewer, false),
    rule("SetModule", true, Operator, false),
    rule("CreateTenant", true, Admin, false),
    rule("GetTenant", false, Viewer, true),
    rule("ListTenants", false, Viewer, true),
    rule("UpdateTenant", true, Admin, false),
    rule("DeleteTenant", true, Admin, false),
    rule("CreateKey", true, Admin, true),
    rule("GetKey", false, Viewer, true),
    rule("ListKeys", false, Viewer, true),
    rule("RevokeKey", true, Admin, true),
    rule("RotateKey", true, Admin, true),
    rule("Status", false, Viewer, false),
    rule("SetLimit", true, Operator, true),
    rule("ListLimits", false, Viewer, true),
    rule("RemoveLimit", true, Operator, true),
    rule("SetCap", true, Operator, true),
    rule("ListCaps", false, Viewer, true),
    rule("RemoveCap", true, Operator, true),
    rule("QueryUsage", false, Viewer, true),
    rule("CreateAdmin", true, Admin, false),
    rule("ListAdmins", false, Viewer, false),
    rule("RevokeAdmin", true, Admin, false),
    rule("ListAudit", false, Viewer, true),
    rule("FollowAudit", false, Viewer, true),
    rule("VerifyAudit", false, Viewer, false),
];

/// The rule of an RPC by its method name (e.g. `CreateKey`).
pub fn rule_of(rpc: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.rpc == rpc)
}

impl Rule {
    /// Why `who` may not make this call, if it may not.
    pub fn refuses(&self, who: &Identity) -> Option<String> {
        if who.role < self.least {
            return Some(format!(
                "{} ({}) may not call {}: it needs the role {} or above",
                who.name, who.role, self.rpc, self.least
            ));
        }
        if let Some(tenant) = &who.tenant
            && !self.scoped
        {
            return Some(format!(
                "{} is scoped to tenant {:?} and may not call {}, which reaches beyond one tenant",
                who.name, tenant.name, self.rpc
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_table_names_each_rpc_of_the_service_once() {
        let service: HashSet<String> = admin_service_methods();
        let table: HashSet<String> = RULES.iter().map(|r| r.rpc.to_owned()).collect();
        assert_eq!(table.len(), RULES.len(), "an RPC is in the table twice");
        assert_eq!(service, table);
    }

    /// The methods of `drover.v1.AdminService`, from the descriptor set reflection serves.
    fn admin_service_methods() -> HashSet<String> {
        use prost::Message as _;
        let set = prost_types_lite::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        set.file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name.as_deref() == Some("AdminService"))
            .flat_map(|s| &s.method)
            .filter_map(|m| m.name.clone())
            .collect()
    }

    /// Just enough of `google.protobuf.FileDescriptorSet` to list services and methods.
    mod prost_types_lite {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            pub file: Vec<FileDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorProto {
            #[prost(message, repeated, tag = "6")]
            pub service: Vec<ServiceDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ServiceDescriptorProto {
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
            #[prost(message, repeated, tag = "2")]
            pub method: Vec<MethodDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct MethodDescriptorProto {
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
        }
    }

    /// The table in docs/admin-roles.md, row by row.
    pub fn docs_table() -> Vec<(String, bool, [bool; 3], bool)> {
        let doc = include_str!("../../docs/admin-roles.md");
        let word = |cell: &str, yes: &str, no: &str| match cell {
            c if c == yes => true,
            c if c == no => false,
            other => panic!("unexpected cell {other:?}"),
        };
        doc.lines()
            .skip_while(|l| !l.starts_with("| RPC |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                assert_eq!(cells.len(), 6, "{l}");
                (
                    cells[0].to_owned(),
                    word(cells[1], "yes", "no"),
                    [
                        word(cells[2], "allowed", "refused"),
                        word(cells[3], "allowed", "refused"),
                        word(cells[4], "allowed", "refused"),
                    ],
                    word(cells[5], "own tenant", "refused"),
                )
            })
            .collect()
    }

    #[test]
    fn the_docs_table_is_the_code_table() {
        let code: Vec<_> = RULES
            .iter()
            .map(|r| {
                let allowed = [Viewer, Operator, Admin].map(|role| role >= r.least);
                (r.rpc.to_owned(), r.changes, allowed, r.scoped)
            })
            .collect();
        assert_eq!(docs_table(), code);
    }

    #[test]
    fn roles_are_ordered_and_scoped_identities_stay_in_their_lane() {
        let who = |role, tenant: Option<&str>| Identity {
            name: "x".into(),
            role,
            tenant: tenant.map(|n| TenantScope {
                id: 1,
                name: n.into(),
                created_unix_ms: 0,
            }),
        };
        let create_key = rule_of("CreateKey").unwrap();
        assert!(create_key.refuses(&who(Admin, None)).is_none());
        assert!(create_key.refuses(&who(Admin, Some("acme"))).is_none());
        let why = create_key.refuses(&who(Operator, None)).unwrap();
        assert!(why.contains("needs the role admin"), "{why}");
        let add_provider = rule_of("AddProvider").unwrap();
        assert!(add_provider.refuses(&who(Operator, None)).is_none());
        let why = add_provider.refuses(&who(Admin, Some("acme"))).unwrap();
        assert!(why.contains("scoped to tenant \"acme\""), "{why}");
        assert!(rule_of("Nope").is_none());
        for r in ["viewer", "operator", "admin"] {
            assert_eq!(Role::parse(r).unwrap().as_str(), r);
            let role = Role::parse(r).unwrap();
            assert_eq!(Role::from_wire(role.to_wire() as i32), Some(role));
        }
        assert_eq!(Role::from_wire(0), None);
        assert_eq!(Role::from_wire(99), None);
    }
}
