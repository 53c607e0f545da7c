//! Authentication and tenant isolation.
//!
//! - JWTs with one pinned algorithm (HS256 by default; RS256 or EdDSA with a PEM public key).
//!   `alg: none`, any other algorithm, keys carried in the token header, and HS/RS confusion are
//!   all refused: verification uses only the configured key and algorithm.
//! - `exp` is required, `nbf` honoured, `iss`/`aud` checked when configured, leeway ≤ 30 s.
//! - Claims: user from `sub` (or `userId`), tenant from `tenantId` (or `tenant_id`, `tid`),
//!   roles from `roles` (array) or `role` (string).
//! - The tenant always comes from the token. An `X-Tenant-ID` that differs is 403
//!   `TENANT_VIOLATION`, except for a `super_admin` who also sends `X-Justification`; every such
//!   cross-tenant access is audited (INV-003).

use crate::error::ApiError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use sdk_core::ids::{TenantId, UserId};
use serde::{Deserialize, Serialize};

pub const SUPER_ADMIN: &str = "super_admin";
pub const MAX_LEEWAY_SECS: u64 = 30;

/// How tokens are verified (and, with a shared secret, minted for development).
#[derive(Clone)]
pub struct JwtConfig {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtConfig {
    /// HS256 with a shared secret (at least 32 bytes).
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err("the JWT secret must be at least 32 bytes".into());
        }
        Ok(Self {
            algorithm: Algorithm::HS256,
            decoding: DecodingKey::from_secret(secret),
            encoding: Some(EncodingKey::from_secret(secret)),
            issuer: None,
            audience: None,
            leeway: 5,
        })
    }

    /// RS256 or EdDSA with a PEM public key (tokens are minted elsewhere).
    pub fn public_key(algorithm: Algorithm, pem: &[u8]) -> Result<Self, String> {
        let decoding = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            other => return Err(format!("algorithm {other:?} is not supported with a public key")),
        }
        .map_err(|e| format!("reading the public key: {e}"))?;
        Ok(Self { algorithm, decoding, encoding: None, issuer: None, audience: None, leeway: 5 })
    }

    /// Also mint tokens with this private key (tests, the `token` command).
    pub fn with_private_key(mut self, pem: &[u8]) -> Result<Self, String> {
        let key = match self.algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => return Err("a private key goes with RS256 or EdDSA".into()),
        }
        .map_err(|e| format!("reading the private key: {e}"))?;
        self.encoding = Some(key);
        Ok(self)
    }

    pub fn with_issuer(mut self, iss: Option<String>) -> Self {
        self.issuer = iss;
        self
    }

    pub fn with_audience(mut self, aud: Option<String>) -> Self {
        self.audience = aud;
        self
    }

    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs.min(MAX_LEEWAY_SECS);
        self
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Verify a token and return its identity.
    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        let mut v = Validation::new(self.algorithm);
        v.algorithms = vec![self.algorithm];
        v.set_required_spec_claims(&["exp"]);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        let data = decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| ApiError::auth(format!("invalid token: {e}")))?;
        data.claims.identity()
    }

    /// Mint a token (development, tests). Needs a secret or a private key.
    pub fn mint(&self, claims: &Claims) -> Result<String, String> {
        let key = self.encoding.as_ref().ok_or("no signing key is configured")?;
        encode(&Header::new(self.algorithm), claims, key).map_err(|e| e.to_string())
    }
}

/// The claims PF-2 Sync reads (others are ignored).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, rename = "userId", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(
        default,
        rename = "tenantId",
        alias = "tenant_id",
        alias = "tid",
        skip_serializing_if = "Option::is_none"
    )]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Every other claim, kept for sync rules' templates (`{projects[]}`).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// Claims for `user` in `tenant`, valid for `ttl_secs` from `now_secs`.
    pub fn new(tenant: &str, user: &str, now_secs: u64, ttl_secs: u64) -> Self {
        Self {
            sub: Some(user.into()),
            tenant_id: Some(tenant.into()),
            exp: now_secs + ttl_secs,
            iat: Some(now_secs),
            ..Self::default()
        }
    }

    fn identity(self) -> Result<Identity, ApiError> {
        let user = self
            .sub
            .or(self.user_id)
            .ok_or_else(|| ApiError::auth("the token has no user (sub)"))?;
        let tenant = self.tenant_id.ok_or_else(|| ApiError::auth("the token has no tenantId"))?;
        let mut roles = self.roles;
        roles.extend(self.role);
        // What sync rules' templates see: the other claims, `sub` the user as resolved here.
        let mut claims = self.other;
        claims.insert("sub".into(), serde_json::Value::String(user.clone()));
        Ok(Identity {
            claims: std::sync::Arc::new(claims),
            user: UserId::new(user).map_err(|e| ApiError::auth(format!("token user: {e}")))?,
            tenant: TenantId::new(tenant)
                .map_err(|e| ApiError::auth(format!("token tenant: {e}")))?,
            roles,
            exp: self.exp,
        })
    }
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: UserId,
    pub tenant: TenantId,
    pub roles: Vec<String>,
    pub exp: u64,
    /// The claims sync rules expand (`sub` and every claim PF-2 itself does not read).
    pub claims: std::sync::Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_verifies_to_its_identity() {
        let cfg = JwtConfig::hs256(SECRET).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = Claims::new("acme", "alice", now, 60);
        claims.roles = vec!["admin".into()];
        let id = cfg.verify(&cfg.mint(&claims).unwrap()).unwrap();
        assert_eq!((id.tenant.as_str(), id.user.as_str()), ("acme", "alice"));
        assert!(id.has_role("admin"));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtConfig::hs256(b"short").is_err());
    }

    #[test]
    fn leeway_is_capped() {
        assert_eq!(JwtConfig::hs256(SECRET).unwrap().with_leeway(600).leeway, MAX_LEEWAY_SECS);
    }
}
