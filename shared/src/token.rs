//! User tokens: where a request carries one, and whether it is good.
//!
//! A token is an HS256 JWT with `sub` (the user id, a string of digits as PyJWT
//! requires, or a JSON integer), `exp` (required), and optional `college_id` and
//! `name`. It may come as `?token=`, `Authorization: Token <jwt>` or
//! `Authorization: Bearer <jwt>`. Errors never contain the token.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::topology::{CollegeId, DeviceId, Subscriber, UserId};

/// Why a request is not authenticated. Every variant answers 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send `Authorization: Bearer <token>`, `Authorization: Token <token>` or `?token=`"
    )]
    Missing,
    #[error("the Authorization header must be `Bearer <token>` or `Token <token>`")]
    BadScheme,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (`nbf` is in the future)")]
    NotYetValid,
    #[error("the token is not valid: {0}")]
    Invalid(&'static str),
}

impl AuthError {
    /// The machine-readable `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::BadScheme => "bad_authorization_scheme",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub college_id: Option<CollegeId>,
    pub name: Option<String>,
}

impl Identity {
    /// The queue this user (or one of their devices) polls and the routing keys that
    /// feed it.
    pub fn subscriber(&self, device: Option<DeviceId>) -> Subscriber {
        Subscriber {
            user_id: self.user_id,
            college_id: self.college_id,
            device,
        }
    }
}

/// The claims as they are signed.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(deserialize_with = "user_id_from_string_or_number")]
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    college_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// Accepts `"123"` (what PyJWT requires) and `123`.
fn user_id_from_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sub {
        Text(String),
        Number(u64),
    }
    Ok(match Sub::deserialize(d)? {
        Sub::Text(text) => text,
        Sub::Number(number) => number.to_string(),
    })
}

/// Verifies user tokens with the shared HS256 secret.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // HS256 only (an `alg: none` or RS256 token is refused), `exp` required, and an
        // expired token is expired: no leeway. A token with `nbf` is refused before it.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Also requires `iss` to be `issuer` (when given) and `aud` to name `audience`
    /// (when given): `JWT_ISSUER` and `JWT_AUDIENCE`, for an identity provider whose
    /// secret signs tokens for other services too.
    pub fn requiring(mut self, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut required = vec!["exp"];
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            self.validation.validate_aud = true;
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// Checks signature, algorithm and expiry, and reads the claims.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (`iss`)"),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (`aud`)"),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::Invalid("only HS256 is accepted")
                }
                ErrorKind::MissingRequiredClaim(_) => {
                    AuthError::Invalid("a required claim is missing")
                }
                ErrorKind::Json(_) => AuthError::Invalid("claims of the wrong type"),
                _ => AuthError::Invalid("malformed token"),
            },
        )?;
        let claims = data.claims;
        let user_id = claims
            .sub
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or(AuthError::Invalid("`sub` must be a positive user id"))?;
        Ok(Identity {
            user_id: UserId(user_id),
            college_id: claims.college_id.map(CollegeId),
            name: claims.name,
        })
    }
}

/// Finds the token in a request: the `Authorization` header first, then `?token=`.
pub fn extract_token<'a>(
    authorization: Option<&'a str>,
    query_token: Option<&'a str>,
) -> Result<&'a str, AuthError> {
    if let Some(header) = authorization {
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::BadScheme)?;
        let token = token.trim();
        if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
            || token.is_empty()
        {
            return Err(AuthError::BadScheme);
        }
        return Ok(token);
    }
    query_token
        .filter(|token| !token.is_empty())
        .ok_or(AuthError::Missing)
}

/// Mints user tokens, for tests and local use (the CLI's `token`, the local server).
pub struct TokenIssuer {
    key: EncodingKey,
}

impl TokenIssuer {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: EncodingKey::from_secret(secret),
        }
    }

    /// A token carrying exactly `claims` (a JSON object), signed: for testing the
    /// verifier's rules on claims this issuer does not otherwise set (`nbf`, `iss`, `aud`).
    pub fn mint_claims(&self, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// A token for `user`, valid for `ttl`.
    pub fn mint(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        name: Option<&str>,
        ttl: Duration,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.mint_expiring_at(user, college, name, (now + ttl).as_secs())
    }

    /// A token that expires at `exp` (epoch seconds); in the past makes an expired one.
    pub fn mint_expiring_at(
        &self,
        user: UserId,
        college: Option<CollegeId>,
        name: Option<&str>,
        exp: u64,
    ) -> String {
        let claims = Claims {
            sub: user.0.to_string(),
            exp,
            college_id: college.map(|c| c.0),
            name: name.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .expect("HS256 signing with an in-memory key cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(claims: serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn a_string_or_integer_sub_is_the_user() {
        let verifier = TokenVerifier::new(SECRET);
        let text = sign(
            json!({"sub": "42", "exp": now() + 60, "college_id": 5, "name": "Ann"}),
            Algorithm::HS256,
            SECRET,
        );
        let number = sign(
            json!({"sub": 42, "exp": now() + 60}),
            Algorithm::HS256,
            SECRET,
        );
        let identity = verifier.verify(&text).unwrap();
        assert_eq!(identity.user_id, UserId(42));
        assert_eq!(identity.college_id, Some(CollegeId(5)));
        assert_eq!(identity.name.as_deref(), Some("Ann"));
        assert_eq!(verifier.verify(&number).unwrap().user_id, UserId(42));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let verifier = TokenVerifier::new(SECRET);
        let expired = sign(
            json!({"sub": "1", "exp": now() - 1}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(verifier.verify(&expired), Err(AuthError::Expired));
        let forged = sign(
            json!({"sub": "1", "exp": now() + 60}),
            Algorithm::HS256,
            b"other",
        );
        assert_eq!(
            verifier.verify(&forged).unwrap_err().code(),
            "invalid_token"
        );
        let other_alg = sign(
            json!({"sub": "1", "exp": now() + 60}),
            Algorithm::HS384,
            SECRET,
        );
        assert_eq!(
            verifier.verify(&other_alg),
            Err(AuthError::Invalid("only HS256 is accepted"))
        );
        let no_exp = sign(json!({"sub": "1"}), Algorithm::HS256, SECRET);
        assert_eq!(
            verifier.verify(&no_exp).unwrap_err().code(),
            "invalid_token"
        );
        for sub in [json!("abc"), json!("0"), json!(-3)] {
            let token = sign(
                json!({"sub": sub, "exp": now() + 60}),
                Algorithm::HS256,
                SECRET,
            );
            assert_eq!(verifier.verify(&token).unwrap_err().code(), "invalid_token");
        }
        // `alg: none`, hand-made, since no library will sign one.
        let unsigned =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(
            verifier.verify(unsigned).unwrap_err().code(),
            "invalid_token"
        );
        assert_eq!(
            verifier.verify("garbage").unwrap_err().code(),
            "invalid_token"
        );
    }

    #[test]
    fn errors_never_contain_the_token() {
        let verifier = TokenVerifier::new(SECRET);
        let token = sign(
            json!({"sub": "1", "exp": now() + 60}),
            Algorithm::HS256,
            b"other",
        );
        let error = verifier.verify(&token).unwrap_err();
        assert!(!error.to_string().contains(&token));
    }

    #[test]
    fn the_header_wins_over_the_query_and_both_schemes_work() {
        assert_eq!(extract_token(Some("Bearer abc"), Some("q")), Ok("abc"));
        assert_eq!(extract_token(Some("Token abc"), None), Ok("abc"));
        assert_eq!(extract_token(Some("bearer  abc "), None), Ok("abc"));
        assert_eq!(extract_token(None, Some("q")), Ok("q"));
        assert_eq!(extract_token(None, None), Err(AuthError::Missing));
        assert_eq!(extract_token(None, Some("")), Err(AuthError::Missing));
        assert_eq!(
            extract_token(Some("Basic abc"), None),
            Err(AuthError::BadScheme)
        );
        assert_eq!(extract_token(Some("abc"), None), Err(AuthError::BadScheme));
    }

    #[test]
    fn minted_tokens_verify() {
        let issuer = TokenIssuer::new(SECRET);
        let token = issuer.mint(UserId(9), Some(CollegeId(2)), None, Duration::from_secs(60));
        let identity = TokenVerifier::new(SECRET).verify(&token).unwrap();
        assert_eq!(
            (identity.user_id, identity.college_id),
            (UserId(9), Some(CollegeId(2)))
        );
        let expired = issuer.mint_expiring_at(UserId(9), None, None, now() - 10);
        assert_eq!(
            TokenVerifier::new(SECRET).verify(&expired),
            Err(AuthError::Expired)
        );
    }
}
