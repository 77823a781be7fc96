//! JWT verification (the crate's `jwt` feature): a token's signature,
//! `exp`, `nbf` and the claims an [`Identity`] is made of.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::server::conn::identity::Identity;

/// The JWT claims read.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    topics: Option<Vec<String>>,
}

/// JWT verification.
#[derive(Clone)]
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    fn with(key: DecodingKey, algorithm: Algorithm) -> Jwt {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Jwt { key, validation }
    }

    /// HS256 with a shared secret.
    ///
    /// # Errors
    ///
    /// The secret cannot be used as a key.
    pub fn hs256(secret: &[u8]) -> Result<Jwt, String> {
        DecodingKey::from_secret(secret)
            .map(|key| Jwt::with(key, Algorithm::HS256))
            .map_err(|e| e.to_string())
    }

    /// RS256 with an RSA public key in PEM.
    ///
    /// # Errors
    ///
    /// The PEM is not an RSA public key.
    pub fn rs256(pem: &[u8]) -> Result<Jwt, String> {
        DecodingKey::from_rsa_pem(pem)
            .map(|key| Jwt::with(key, Algorithm::RS256))
            .map_err(|e| e.to_string())
    }

    /// ES256 with an EC (P-256) public key in PEM.
    ///
    /// # Errors
    ///
    /// The PEM is not an EC public key.
    pub fn es256(pem: &[u8]) -> Result<Jwt, String> {
        DecodingKey::from_ec_pem(pem)
            .map(|key| Jwt::with(key, Algorithm::ES256))
            .map_err(|e| e.to_string())
    }

    /// Verifies a token: signature, algorithm (the key's only; `none` never),
    /// `exp` and `nbf` (no leeway), and a `sub`.
    ///
    /// # Errors
    ///
    /// Why the token was refused (for the log, not for the peer).
    pub fn verify(&self, token: &[u8]) -> Result<Identity, String> {
        let token = std::str::from_utf8(token).map_err(|_| "token is not UTF-8".to_owned())?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| e.to_string())?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err("empty sub".into());
        }
        // An `exp` past what the clock can hold (2^64 - 1, say) is refused,
        // not added: arithmetic on a claim must never panic.
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .ok_or_else(|| format!("exp {} is out of range", claims.exp))?;
        Ok(Identity {
            sub: claims.sub,
            expires: Some(expires),
            topics: claims.topics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use proptest::prelude::*;

    const SECRET: &[u8] = b"a secret for the tests";

    fn signed(exp: u64, nbf: u64) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "exp": exp, "nbf": nbf}),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn an_exp_past_what_the_clock_holds_is_refused_not_a_panic() {
        let jwt = Jwt::hs256(SECRET).unwrap();
        let refused = jwt.verify(signed(u64::MAX, 0).as_bytes()).unwrap_err();
        assert!(refused.contains("out of range"), "{refused}");
    }

    proptest! {
        /// Any claim values: a verdict, never a panic; an accepted token's
        /// expiry is its `exp`.
        #[test]
        fn any_claim_values_are_verified_without_panicking(exp in any::<u64>(), nbf in any::<u64>()) {
            let jwt = Jwt::hs256(SECRET).unwrap();
            if let Ok(identity) = jwt.verify(signed(exp, nbf).as_bytes()) {
                prop_assert_eq!(identity.expires_unix(), Some(exp));
            }
        }
    }
}
