//! Request bodies of docs/PROTOCOL.md, parsed strictly, and their conversion into validated
//! core commands. Every refusal is a [`Rejection`] that names the field.

use crate::internal::{StatementQuery, TransactionLookup};
use chrono::{DateTime, SubsecRound, Utc};
use ledger_core::account::AccountStatus;
use ledger_core::command::{CreateAccountCommand, EntryCommand, ExternalRef, PostCommand, ReverseCommand, SetStatusCommand};
use ledger_core::currency::Currency;
use ledger_core::fingerprint::fingerprint;
use ledger_core::ids::account_id;
use ledger_core::money::{AccountType, Side};
use ledger_core::rejection::Rejection;
use ledger_core::validate::{self, REQUEST_BYTES_MAX};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub const STATEMENT_LIMIT_DEFAULT: u32 = 100;

/// Parses a request body: size first, then strict JSON with the failing field named.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    if body.len() > REQUEST_BYTES_MAX {
        return Err(Rejection::TooLarge { limit_bytes: REQUEST_BYTES_MAX });
    }
    // The plain parser is fast; only a failure is parsed again to name the failing field.
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = error.inner().to_string();
        Rejection::invalid(field_of(&path, &message), message)
    })?;
    deserializer.end().map_err(|error| Rejection::invalid("body", error.to_string()))?;
    Ok(value)
}

/// The field a serde error is about: its path, which for an unknown field already ends in
/// that field; a missing field is named only in the message.
fn field_of(path: &str, message: &str) -> String {
    let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (".", None) | ("?", _) | ("", _) => "body".to_owned(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_owned(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_code: Option<String>,
}

/// Resolves "exactly one of `account_id` or `account_code`" to an id.
fn resolve_account(tenant_id: Uuid, prefix: &str, id: Option<Uuid>, code: Option<&str>) -> Result<Uuid, Rejection> {
    let field = |name: &str| if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") };
    match (id, code) {
        (Some(id), None) => Ok(id),
        (None, Some(code)) => {
            validate::account_code(&field("account_code"), code)?;
            Ok(account_id(tenant_id, code))
        }
        _ => Err(Rejection::invalid(field("account_id"), "give exactly one of account_id or account_code")),
    }
}

fn currency(field: &str, code: &str) -> Result<Currency, Rejection> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Rejection::invalid(field, "must be an ISO 4217 alphabetic code"));
    }
    Currency::parse(code).ok_or_else(|| Rejection::UnknownCurrency { field: field.to_owned(), currency: code.to_owned() })
}

fn time(field: &str, text: &str) -> Result<DateTime<Utc>, Rejection> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
        .map_err(|_| Rejection::invalid(field, "must be an RFC 3339 time"))
}

fn optional_text(field: &str, value: Option<String>, chars_max: usize) -> Result<Option<String>, Rejection> {
    if let Some(text) = &value {
        validate::text(field, text, chars_max)?;
    }
    Ok(value)
}

fn metadata(value: Option<Value>) -> Result<Value, Rejection> {
    let value = match value {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(value) => value,
    };
    validate::metadata("metadata", &value)?;
    Ok(value)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    pub code: String,
    #[serde(rename = "type")]
    pub account_type: String,
    pub currency: String,
    #[serde(default)]
    pub allow_negative: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

impl CreateAccountRequest {
    pub fn into_command(self, tenant_id: Uuid) -> Result<CreateAccountCommand, Rejection> {
        validate::account_code("code", &self.code)?;
        let account_type = AccountType::parse(&self.account_type)
            .ok_or_else(|| Rejection::invalid("type", "must be ASSET, EXPENSE, LIABILITY, EQUITY or REVENUE"))?;
        let currency = currency("currency", &self.currency)?;
        Ok(CreateAccountCommand {
            tenant_id,
            account_id: account_id(tenant_id, &self.code),
            code: self.code,
            account_type,
            currency,
            allow_negative: self.allow_negative,
            metadata: metadata(self.metadata)?,
        })
    }
}

impl AccountRef {
    pub fn resolve(self, tenant_id: Uuid) -> Result<Uuid, Rejection> {
        resolve_account(tenant_id, "", self.account_id, self.account_code.as_deref())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStatusRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_code: Option<String>,
    pub status: String,
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
}

impl SetStatusRequest {
    pub fn into_command(self, tenant_id: Uuid) -> Result<SetStatusCommand, Rejection> {
        let account_id = resolve_account(tenant_id, "", self.account_id, self.account_code.as_deref())?;
        let status =
            AccountStatus::parse(&self.status).ok_or_else(|| Rejection::invalid("status", "must be ACTIVE, FROZEN or CLOSED"))?;
        validate::text("actor", &self.actor, validate::ACTOR_CHARS_MAX)?;
        Ok(SetStatusCommand {
            tenant_id,
            account_id,
            status,
            actor: self.actor,
            reason_code: optional_text("reason_code", self.reason_code, validate::REASON_CODE_CHARS_MAX)?,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

const CURSOR_PREFIX: &str = "seq:";

pub fn statement_cursor(commit_seq: i64) -> String {
    format!("{CURSOR_PREFIX}{commit_seq}")
}

impl StatementRequest {
    pub fn into_query(self, tenant_id: Uuid) -> Result<StatementQuery, Rejection> {
        let account_id = resolve_account(tenant_id, "", self.account_id, self.account_code.as_deref())?;
        let limit = self.limit.unwrap_or(STATEMENT_LIMIT_DEFAULT as i64);
        if !(1..=validate::STATEMENT_LIMIT_MAX as i64).contains(&limit) {
            return Err(Rejection::invalid("limit", format!("must be 1-{}", validate::STATEMENT_LIMIT_MAX)));
        }
        let after_commit_seq = match self.cursor {
            None => None,
            Some(cursor) => Some(
                cursor
                    .strip_prefix(CURSOR_PREFIX)
                    .and_then(|n| n.parse::<i64>().ok())
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Rejection::invalid("cursor", "is not a cursor this ledger gave out"))?,
            ),
        };
        let from = self.from.as_deref().map(|t| time("from", t)).transpose()?;
        let to = self.to.as_deref().map(|t| time("to", t)).transpose()?;
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(Rejection::invalid("to", "must not be before from"));
        }
        Ok(StatementQuery { account_id, from, to, limit: limit as u32, after_commit_seq })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_code: Option<String>,
    pub side: String,
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalRefRequest {
    #[serde(rename = "type")]
    pub ref_type: String,
    #[serde(rename = "ref")]
    pub reference: String,
}

impl ExternalRefRequest {
    fn validate(self, field: &str) -> Result<ExternalRef, Rejection> {
        let external_ref = ExternalRef { ref_type: self.ref_type, reference: self.reference };
        validate::external_ref(field, &external_ref)?;
        Ok(external_ref)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostRequest {
    pub idempotency_key: String,
    #[serde(rename = "type")]
    pub tx_type: String,
    pub entries: Vec<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRefRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

impl PostRequest {
    pub fn into_command(self, tenant_id: Uuid) -> Result<PostCommand, Rejection> {
        validate::idempotency_key("idempotency_key", &self.idempotency_key)?;
        validate::tx_type("type", &self.tx_type)?;
        if self.entries.len() < validate::ENTRIES_MIN || self.entries.len() > validate::ENTRIES_MAX {
            return Err(Rejection::invalid(
                "entries",
                format!("must hold {}-{} entries", validate::ENTRIES_MIN, validate::ENTRIES_MAX),
            ));
        }
        let mut entries = Vec::with_capacity(self.entries.len());
        let mut unknown_currency = None;
        for (index, entry) in self.entries.into_iter().enumerate() {
            let prefix = format!("entries[{index}]");
            let account_id = resolve_account(tenant_id, &prefix, entry.account_id, entry.account_code.as_deref())?;
            let side = Side::parse(&entry.side)
                .ok_or_else(|| Rejection::invalid(format!("{prefix}.side"), "must be DEBIT or CREDIT"))?;
            validate::amount(&format!("{prefix}.amount_minor"), entry.amount_minor)?;
            match currency(&format!("{prefix}.currency"), &entry.currency) {
                Ok(currency) => entries.push(EntryCommand { account_id, side, amount_minor: entry.amount_minor, currency }),
                // every INVALID_REQUEST outranks UNKNOWN_CURRENCY: finish the shape checks first
                Err(rejection @ Rejection::UnknownCurrency { .. }) => {
                    unknown_currency.get_or_insert(rejection);
                }
                Err(rejection) => return Err(rejection),
            }
        }
        let external_ref = self.external_ref.map(|r| r.validate("external_ref")).transpose()?;
        let business_ref = optional_text("business_ref", self.business_ref, validate::BUSINESS_REF_CHARS_MAX)?;
        let occurred_at = self.occurred_at.as_deref().map(|t| time("occurred_at", t)).transpose()?;
        validate::text("actor", &self.actor, validate::ACTOR_CHARS_MAX)?;
        let reason_code = optional_text("reason_code", self.reason_code, validate::REASON_CODE_CHARS_MAX)?;
        let metadata = metadata(self.metadata)?;
        if let Some(rejection) = unknown_currency {
            return Err(rejection);
        }
        let mut command = PostCommand {
            tenant_id,
            idempotency_key: self.idempotency_key,
            fingerprint: String::new(),
            tx_type: self.tx_type,
            entries,
            external_ref,
            business_ref,
            occurred_at,
            actor: self.actor,
            reason_code,
            metadata,
            external_ref_held_by: None,
        };
        // the one function the shard writer checks every post with, too: what remains
        // of it here is the entries' sums, balance and distinct accounts
        validate::post(&command)?;
        command.fingerprint = fingerprint("transactions.post", &command);
        Ok(command)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseRequest {
    pub idempotency_key: String,
    pub ledger_tx_id: Uuid,
    pub actor: String,
    pub reason_code: String,
}

impl ReverseRequest {
    pub fn into_command(self, tenant_id: Uuid) -> Result<ReverseCommand, Rejection> {
        validate::idempotency_key("idempotency_key", &self.idempotency_key)?;
        validate::text("actor", &self.actor, validate::ACTOR_CHARS_MAX)?;
        validate::text("reason_code", &self.reason_code, validate::REASON_CODE_CHARS_MAX)?;
        let mut command = ReverseCommand {
            tenant_id,
            idempotency_key: self.idempotency_key,
            fingerprint: String::new(),
            ledger_tx_id: self.ledger_tx_id,
            actor: self.actor,
            reason_code: self.reason_code,
        };
        command.fingerprint = fingerprint("transactions.reverse", &command);
        Ok(command)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetTransactionRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_tx_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRefRequest>,
}

impl GetTransactionRequest {
    pub fn into_lookup(self) -> Result<TransactionLookup, Rejection> {
        match (self.ledger_tx_id, self.idempotency_key, self.external_ref) {
            (Some(id), None, None) => Ok(TransactionLookup::Id(id)),
            (None, Some(key), None) => {
                validate::idempotency_key("idempotency_key", &key)?;
                Ok(TransactionLookup::IdempotencyKey(key))
            }
            (None, None, Some(external_ref)) => Ok(TransactionLookup::ExternalRef(external_ref.validate("external_ref")?)),
            _ => Err(Rejection::invalid("ledger_tx_id", "give exactly one of ledger_tx_id, idempotency_key or external_ref")),
        }
    }
}

/// `{}`: the body of operator requests that take no arguments.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Uuid {
        Uuid::parse_str("0b6f4a4e-8a3b-4c2e-9d10-5f8f0e2a7c11").unwrap()
    }

    fn post(body: &str) -> Result<PostCommand, Rejection> {
        parse::<PostRequest>(body.as_bytes())?.into_command(tenant())
    }

    const GOOD: &str = r#"{"idempotency_key":"k1","type":"PAYMENT","actor":"svc",
        "entries":[{"account_code":"a","side":"DEBIT","amount_minor":5,"currency":"IDR"},
                   {"account_code":"b","side":"CREDIT","amount_minor":5,"currency":"IDR"}]}"#;

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            ("{", "INVALID_REQUEST", None),
            (r#"{"idempotency_key":"k1"}"#, "INVALID_REQUEST", Some("type")),
            (
                &GOOD.replace(r#""amount_minor":5,"currency":"IDR"},"#, r#""amount_minor":5.0,"currency":"IDR"},"#),
                "INVALID_REQUEST",
                Some("entries[0].amount_minor"),
            ),
            (
                &GOOD.replace(r#""amount_minor":5,"currency":"IDR"},"#, r#""amount_minor":"5","currency":"IDR"},"#),
                "INVALID_REQUEST",
                Some("entries[0].amount_minor"),
            ),
            (
                &GOOD.replace(r#""amount_minor":5,"currency":"IDR"},"#, r#""amount_minor":0,"currency":"IDR"},"#),
                "INVALID_REQUEST",
                Some("entries[0].amount_minor"),
            ),
            (
                &GOOD.replace(
                    r#""amount_minor":5,"currency":"IDR"},"#,
                    r#""amount_minor":9223372036854775808,"currency":"IDR"},"#,
                ),
                "INVALID_REQUEST",
                Some("entries[0].amount_minor"),
            ),
            (&GOOD.replace(r#""actor":"svc""#, r#""actor":"svc","extra":1"#), "INVALID_REQUEST", Some("extra")),
            (&GOOD.replace(r#""side":"DEBIT""#, r#""side":"DEBIT","x":1"#), "INVALID_REQUEST", Some("entries[0].x")),
            (&GOOD.replace("IDR", "XYZ"), "UNKNOWN_CURRENCY", Some("entries[0].currency")),
            (
                &GOOD.replace(r#""amount_minor":5,"currency":"IDR"}]"#, r#""amount_minor":4,"currency":"IDR"}]"#),
                "UNBALANCED",
                None,
            ),
            (&GOOD.replace(r#""account_code":"b""#, r#""account_code":"a""#), "DUPLICATE_ACCOUNT", None),
            (&GOOD.replace(r#""type":"PAYMENT""#, r#""type":"REVERSAL""#), "INVALID_REQUEST", Some("type")),
        ];
        for (body, code, field) in cases {
            let rejection = post(body).expect_err(body);
            assert_eq!(rejection.code(), code, "{body}");
            if let Some(field) = field {
                assert_eq!(rejection.details()["field"], field, "{body}");
            }
        }
        assert_eq!(post(&format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000))).unwrap_err().code(), "TOO_LARGE");
    }

    #[test]
    fn naming_an_account_by_code_or_id_fingerprints_the_same() {
        let by_code = post(GOOD).unwrap();
        let id = account_id(tenant(), "a");
        let by_id = post(&GOOD.replace(r#""account_code":"a""#, &format!(r#""account_id":"{id}""#))).unwrap();
        assert_eq!(by_code.fingerprint, by_id.fingerprint);
        let other = post(&GOOD.replace(r#""amount_minor":5"#, r#""amount_minor":6"#)).unwrap();
        assert_ne!(by_code.fingerprint, other.fingerprint);
    }
}
