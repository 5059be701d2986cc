//! From a request's subject and body to the shard (or saga) that serves it.

use crate::*;
use async_nats::Subject;
use bytes::Bytes;
use ledger_core::command::Command;
use ledger_core::error_code::ErrorCode;
use ledger_core::ids::{is_saga_id, shard_of_ledger_id};
use ledger_core::rejection::Rejection;
use ledger_core::ring::ShardId;
use ledger_core::saga::SagaRecord;
use ledger_protocol::internal::{Redirect, ShardReply, ShardRequest, TransactionLookup};
use ledger_protocol::request::{
    AccountRef, CreateAccountRequest, GetTransactionRequest, PostRequest, ReverseRequest, SetStatusRequest, StatementRequest,
    parse,
};
use ledger_protocol::subject::{self};
use std::collections::BTreeSet;
use uuid::Uuid;

pub(crate) fn rejected(rejection: Rejection) -> ShardReply {
    ShardReply::rejected(&rejection)
}

impl Router {
    pub async fn handle(&self, subject: &Subject, payload: &Bytes) -> ShardReply {
        match self.dispatch(subject, payload).await {
            Ok(reply) => reply,
            Err(rejection) => rejected(rejection),
        }
    }

    pub(crate) async fn dispatch(&self, subject: &str, payload: &[u8]) -> Result<ShardReply, Rejection> {
        if let Some(operation) = subject.strip_prefix("ledger.v1.admin.") {
            return self.admin(operation, payload).await;
        }
        let (tenant_id, operation) = subject::tenant_operation(subject).ok_or_else(|| {
            Rejection::invalid("subject", "must be ledger.v1.<tenant id, a lowercase canonical UUID>.<resource>.<operation>")
        })?;
        Ok(match operation {
            "accounts.create" => {
                let command = parse::<CreateAccountRequest>(payload)?.into_command(tenant_id)?;
                let shard = self.ring.shard_for_account(command.account_id);
                self.link.write(shard, Command::CreateAccount(command)).await
            }
            "accounts.get" => {
                let account_id = parse::<AccountRef>(payload)?.resolve(tenant_id)?;
                let shard = self.ring.shard_for_account(account_id);
                self.link.send(shard, &ShardRequest::GetAccount { tenant_id, account_id }).await
            }
            "accounts.set_status" => {
                let command = parse::<SetStatusRequest>(payload)?.into_command(tenant_id)?;
                let shard = self.ring.shard_for_account(command.account_id);
                self.link.write(shard, Command::SetStatus(command)).await
            }
            "accounts.statement" => {
                let query = parse::<StatementRequest>(payload)?.into_query(tenant_id)?;
                let shard = self.ring.shard_for_account(query.account_id);
                self.link.send(shard, &ShardRequest::Statement { tenant_id, query }).await
            }
            "transactions.post" => {
                let command = parse::<PostRequest>(payload)?.into_command(tenant_id)?;
                let shards: BTreeSet<ShardId> =
                    command.entries.iter().map(|e| self.ring.shard_for_account(e.account_id)).collect();
                if shards.len() > 1 {
                    return Ok(self.cross_shard_post(command).await);
                }
                let target = *shards.first().expect("validated: at least two entries");
                self.keyed_write(target, Command::Post(command)).await
            }
            "transactions.reverse" => {
                let command = parse::<ReverseRequest>(payload)?.into_command(tenant_id)?;
                if is_saga_id(command.ledger_tx_id)
                    && let Some(home) = self.shard_of_transaction(command.ledger_tx_id)
                {
                    let ask = ShardRequest::GetSaga { tenant_id, saga_id: command.ledger_tx_id };
                    let found = self.link.send(home, &ask).await;
                    match found.data::<SagaRecord>("saga log") {
                        Ok(original) => return Ok(self.cross_shard_reverse(command, original).await),
                        // an id minted before saga ids were flagged: an ordinary transaction
                        Err(refused) if refused.refusal() == Some(ErrorCode::TransactionNotFound) => {}
                        Err(other) => return Ok(other),
                    }
                }
                let target = self.shard_of_transaction(command.ledger_tx_id).ok_or(Rejection::TransactionNotFound)?;
                self.keyed_write(target, Command::Reverse(command)).await
            }
            "transactions.get" => {
                let lookup = parse::<GetTransactionRequest>(payload)?.into_lookup()?;
                self.get_transaction(tenant_id, lookup).await?
            }
            _ => return Err(Rejection::invalid("subject", format!("unknown operation {operation}"))),
        })
    }

    pub(crate) fn shard_of_transaction(&self, ledger_tx_id: Uuid) -> Option<ShardId> {
        shard_of_ledger_id(ledger_tx_id).filter(|shard| self.ring.shards().contains(shard))
    }

    /// A lookup by id goes to the shard the id names; by key or reference, to their home
    /// shard, which answers or names where to ask next.
    pub(crate) async fn get_transaction(&self, tenant_id: Uuid, lookup: TransactionLookup) -> Result<ShardReply, Rejection> {
        let first = match &lookup {
            TransactionLookup::Id(id) => self.shard_of_transaction(*id).ok_or(Rejection::TransactionNotFound)?,
            TransactionLookup::IdempotencyKey(key) => self.ring.shard_for_key(tenant_id, key),
            TransactionLookup::ExternalRef(external_ref) => {
                self.ring.shard_for_key(tenant_id, &external_ref_home_key(external_ref))
            }
        };
        let mut reply = self.link.send(first, &ShardRequest::GetTransaction { tenant_id, by: lookup.clone() }).await;
        // at most two hops: key home -> deciding shard -> the transaction's shard
        for _ in 0..2 {
            let (shard, by) = match reply {
                ShardReply::Redirect(Redirect::Transaction { ledger_tx_id }) => (
                    self.shard_of_transaction(ledger_tx_id).ok_or(Rejection::TransactionNotFound)?,
                    TransactionLookup::Id(ledger_tx_id),
                ),
                ShardReply::Redirect(Redirect::KeyOnShard { shard_id }) => (shard_id, lookup.clone()),
                ShardReply::Redirect(Redirect::Saga { record }) => return Ok(self.saga_transaction(&record).await),
                other => return Ok(other),
            };
            reply = self.link.send(shard, &ShardRequest::GetTransaction { tenant_id, by }).await;
        }
        Ok(match reply {
            ShardReply::Redirect(_) => ShardReply::internal("transaction lookup did not settle"),
            other => other,
        })
    }
}
