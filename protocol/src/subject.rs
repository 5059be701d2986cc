//! Subjects. Public ones put the tenant in the subject so that the NATS server itself can
//! enforce tenant isolation with per-user permissions; internal ones address a shard.

use uuid::Uuid;

pub const SERVICE_NAME: &str = "ledger";
pub const SERVICE_VERSION: &str = "1.0.0";
pub const QUEUE_GROUP: &str = "ledger-router";

/// The tenant operations, as `<resource>.<op>`.
pub const TENANT_OPERATIONS: &[&str] = &[
    "accounts.create",
    "accounts.get",
    "accounts.set_status",
    "accounts.statement",
    "transactions.post",
    "transactions.get",
    "transactions.reverse",
];

pub const ADMIN_OPERATIONS: &[&str] = &["topology", "audit", "rebuild_balances"];

pub fn tenant_subject(tenant_id: Uuid, operation: &str) -> String {
    format!("ledger.v1.{}.{operation}", tenant_id.hyphenated())
}

/// `ledger.v1.admin.<operation>`.
pub fn admin_subject(operation: &str) -> String {
    format!("ledger.v1.admin.{operation}")
}

/// The tenant of a public subject, if it is a lowercase canonical UUID.
pub fn tenant_of(subject: &str) -> Option<Uuid> {
    let tenant = subject.strip_prefix("ledger.v1.")?.split('.').next()?;
    if tenant.len() != 36 || tenant.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Uuid::parse_str(tenant).ok()
}

/// The tenant and the operation of a public tenant subject
/// (`ledger.v1.<tenant>.<resource>.<op>`); `None` if the tenant is not a lowercase
/// canonical UUID or no operation follows it.
pub fn tenant_operation(subject: &str) -> Option<(Uuid, &str)> {
    let tenant_id = tenant_of(subject)?;
    let operation = subject.get("ledger.v1.".len() + 36..)?.strip_prefix('.')?;
    (!operation.is_empty()).then_some((tenant_id, operation))
}

/// Where a router sends a shard's internal requests.
pub fn shard_subject(shard_id: u16) -> String {
    format!("ledger.internal.v1.shard.{shard_id}")
}

pub fn events_subject(tenant_id: Uuid, event_type: &str) -> String {
    format!("ledger.v1.events.{}.{event_type}", tenant_id.hyphenated())
}

pub const EVENTS_STREAM: &str = "LEDGER_EVENTS";
pub const EVENTS_SUBJECTS: &str = "ledger.v1.events.>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_must_be_lowercase_canonical() {
        let id = Uuid::parse_str("0b6f4a4e-8a3b-4c2e-9d10-5f8f0e2a7c11").unwrap();
        assert_eq!(tenant_of(&tenant_subject(id, "accounts.get")), Some(id));
        assert_eq!(tenant_of("ledger.v1.0B6F4A4E-8A3B-4C2E-9D10-5F8F0E2A7C11.accounts.get"), None);
        assert_eq!(tenant_of("ledger.v1.0b6f4a4e8a3b4c2e9d105f8f0e2a7c11.accounts.get"), None);
        assert_eq!(tenant_of("ledger.v1.admin.topology"), None);
    }

    #[test]
    fn a_tenant_subject_without_an_operation_has_none() {
        let id = Uuid::parse_str("0b6f4a4e-8a3b-4c2e-9d10-5f8f0e2a7c11").unwrap();
        assert_eq!(tenant_operation(&tenant_subject(id, "accounts.get")), Some((id, "accounts.get")));
        for bare in [format!("ledger.v1.{id}"), format!("ledger.v1.{id}."), format!("ledger.v1.{id}x")] {
            assert_eq!(tenant_operation(&bare), None, "{bare}");
        }
    }
}
