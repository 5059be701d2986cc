//! Creating a shard's database on its server when it is not there yet.

use super::*;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

/// Creates the database of `database_url` if its server does not have it yet.
pub async fn ensure_database(database_url: &str) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(database_url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    if !database_exists(&mut admin, &name).await? {
        // a name cannot be bound as a parameter in DDL: quoted as an identifier instead
        let create = format!("create database \"{}\"", name.replace('"', "\"\""));
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut admin).await {
            // another node or test may have created it in between
            if !database_exists(&mut admin, &name).await? {
                return Err(error.into());
            }
        }
    }
    admin.close().await?;
    Ok(())
}

async fn database_exists(admin: &mut PgConnection, name: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(include_str!("sql/database/database_exists.sql")).bind(name).fetch_one(admin).await?)
}
