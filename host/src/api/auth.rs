//! Who is calling: an operator (a token of `server.admin_tokens` or
//! `HOOKWASM_ADMIN_TOKEN`), a client (one of its API tokens), or nobody.
//!
//! Client tokens are random (`hwk_` and 43 base64url characters, 256 bits),
//! shown once when created and stored only as their SHA-256: a token is found by
//! the hash of what is presented, so a stolen store gives no usable token, and
//! the lookup's timing says nothing about any token's bytes. Operator tokens
//! are compared in constant time. Only `Authorization: Bearer` is read here: a
//! token in a URL ends up in logs.
//!
//! The extractors answer for the routes: [`Operator`] lets operators through
//! (401 without a token, 403 for a client's), [`ClientAccess`] lets through the
//! operator and the client named in the path; any other client's token gets the
//! same 404 as a client that does not exist, so it learns nothing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::{Api, ApiError};
use crate::directory::Entry;
use crate::model::now_ms;
use crate::store::{Store, StoreError, rows};

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    Operator,
    Client(String),
}

pub struct Auth {
    /// Client tokens by the hex SHA-256 of the token.
    tokens: RwLock<HashMap<String, rows::TokenRow>>,
    store: Store,
}

impl Auth {
    /// The client tokens of the store (the operators' are the config's, read
    /// at each call: a reload of the file changes them).
    pub async fn load(store: Store) -> Result<Auth, StoreError> {
        let tokens = store.tokens().await?;
        Ok(Auth {
            tokens: RwLock::new(tokens.into_iter().map(|t| (t.hash.clone(), t)).collect()),
            store,
        })
    }

    /// Reads the client tokens again: with several hosts, another one may
    /// have made or revoked some.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let tokens = self.store.tokens().await?;
        *self.tokens.write().unwrap() = tokens.into_iter().map(|t| (t.hash.clone(), t)).collect();
        Ok(())
    }

    /// The caller the request's bearer token names; a 401 without one that is
    /// known.
    pub fn identify(&self, headers: &HeaderMap, operators: &[String]) -> Result<Caller, ApiError> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 9110).
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "a token is required: `Authorization: Bearer <token>`",
                )
            })?;
        // Every operator token is compared, found or not.
        let operator = operators.iter().fold(false, |hit, t| {
            hit | constant_time_eq(t.as_bytes(), given.as_bytes())
        });
        if operator {
            return Ok(Caller::Operator);
        }
        if let Some(t) = self.tokens.read().unwrap().get(&hash(given)) {
            return Ok(Caller::Client(t.client_id.clone()));
        }
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))
    }

    /// A new token for `client`: its row, and the token, to be shown this once.
    pub async fn create(
        &self,
        client: &str,
        label: Option<String>,
    ) -> Result<(rows::TokenRow, String), StoreError> {
        use base64::Engine as _;
        let secret: [u8; 32] = rand::random();
        let token = format!(
            "hwk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let row = rows::TokenRow {
            token_id: format!("tok_{}", ulid::Ulid::new().to_string().to_lowercase()),
            client_id: client.to_string(),
            hash: hash(&token),
            label,
            created_at: now_ms(),
        };
        self.store.add_token(row.clone()).await?;
        self.tokens
            .write()
            .unwrap()
            .insert(row.hash.clone(), row.clone());
        Ok((row, token))
    }

    /// `client`'s tokens (never their values).
    pub fn list(&self, client: &str) -> Vec<rows::TokenRow> {
        let mut out: Vec<rows::TokenRow> = self
            .tokens
            .read()
            .unwrap()
            .values()
            .filter(|t| t.client_id == client)
            .cloned()
            .collect();
        out.sort_by_key(|t| t.created_at);
        out
    }

    /// Revokes one of `client`'s tokens; whether it existed.
    pub async fn revoke(&self, client: &str, token_id: &str) -> Result<bool, StoreError> {
        let found = self.store.delete_token(client, token_id).await?;
        self.tokens
            .write()
            .unwrap()
            .retain(|_, row| !(row.client_id == client && row.token_id == token_id));
        Ok(found)
    }

    /// Forgets a deleted client's tokens (the store dropped them with it).
    pub fn forget_client(&self, client: &str) {
        self.tokens
            .write()
            .unwrap()
            .retain(|_, row| row.client_id != client);
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request from an operator.
pub struct Operator;

impl Operator {
    /// Whether `headers` carry an operator token: 401 without a known token,
    /// 403 for a client's.
    pub fn check(st: &Api, headers: &HeaderMap) -> Result<Operator, ApiError> {
        match st
            .auth
            .identify(headers, &st.directory.config().server.admin_tokens)?
        {
            Caller::Operator => Ok(Operator),
            Caller::Client(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this route needs an operator token; a client token reaches /v1/clients/{its id}/… only",
            )),
        }
    }
}

impl FromRequestParts<Arc<Api>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<Api>) -> Result<Self, ApiError> {
        Operator::check(st, &parts.headers)
    }
}

/// A request on `/v1/clients/{id}/…` from the operator or from client `id`
/// itself, for a client that exists.
pub struct ClientAccess {
    pub entry: Arc<Entry>,
    pub caller: Caller,
}

impl ClientAccess {
    pub fn id(&self) -> &str {
        &self.entry.client.id
    }
}

impl FromRequestParts<Arc<Api>> for ClientAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<Api>) -> Result<Self, ApiError> {
        let caller = st
            .auth
            .identify(&parts.headers, &st.directory.config().server.admin_tokens)?;
        // The first path parameter is the client's id on every client route.
        let Path(params): Path<Vec<(String, String)>> =
            Path::from_request_parts(parts, st)
                .await
                .map_err(|e| ApiError::bad(e.body_text()))?;
        let id = params
            .into_iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let not_found = || ApiError::not_found(format!("no client {id:?}"));
        if let Caller::Client(own) = &caller
            && *own != id
        {
            return Err(not_found());
        }
        let entry = st
            .directory
            .current()
            .get(&id)
            .cloned()
            .ok_or_else(not_found)?;
        Ok(ClientAccess { entry, caller })
    }
}
