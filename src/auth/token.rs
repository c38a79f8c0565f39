//! Bearer tokens in the form distribution's token authentication uses: a
//! JWT whose `access` claim lists what it grants,
//! `[{"type":"repository","name":"app","actions":["pull","push"]}]`.
//!
//! [`Signer`] issues and checks ferro's own tokens (ES256, with a key from
//! a PKCS#8 PEM file or one generated at startup); [`External`] checks
//! tokens of another issuer from its public key. Clients treat tokens as
//! opaque: only the registry reads them.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// One grant of a token: `actions` on the resource `type:name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaim {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl AccessClaim {
    /// Whether this grants `action` on `kind:name` (`*` grants every action).
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.kind == kind
            && self.name == name
            && self.actions.iter().any(|a| a == action || a == "*")
    }
}

/// The claims ferro reads (and writes) in a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user; empty for an anonymous token.
    #[serde(default)]
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessClaim>,
}

/// What checking a token found: who, and what it grants.
#[derive(Debug, Clone)]
pub struct Verified {
    pub subject: Option<String>,
    pub access: Vec<AccessClaim>,
}

/// A scope as clients ask for it: `repository:app/web:pull,push`,
/// `registry:catalog:*`. A resource class (`repository(plugin)`) is
/// dropped. `None` when it has not the three parts.
pub fn parse_scope(scope: &str) -> Option<AccessClaim> {
    let (rest, actions) = scope.rsplit_once(':')?;
    let (kind, name) = rest.split_once(':')?;
    let kind = kind.split('(').next().unwrap_or(kind);
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    Some(AccessClaim {
        kind: kind.to_owned(),
        name: name.to_owned(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Issues and verifies ferro's own tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
    issuer: String,
    audience: String,
    lifetime_secs: u64,
}

impl Signer {
    /// From a PKCS#8 PEM file (`openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256`), or a fresh key when `path` is empty.
    pub fn new(
        path: &Path,
        issuer: &str,
        audience: &str,
        lifetime_secs: u64,
    ) -> Result<Signer, String> {
        let rng = SystemRandom::new();
        let pkcs8: Vec<u8> = if path.as_os_str().is_empty() {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| "cannot generate a signing key".to_owned())?
                .as_ref()
                .to_vec()
        } else {
            PrivatePkcs8KeyDer::from_pem_file(path)
                .map_err(|e| {
                    format!(
                        "token signing key {}: {e} (a PKCS#8 P-256 key is expected)",
                        path.display()
                    )
                })?
                .secret_pkcs8_der()
                .to_vec()
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|e| {
                format!(
                    "token signing key {}: not a P-256 key ({e})",
                    path.display()
                )
            })?;
        let public = pair.public_key().as_ref().to_vec();
        let key_id = hex::encode(&Sha256::digest(&public)[..16]);
        Ok(Signer {
            encoding: EncodingKey::from_ec_der(&pkcs8),
            decoding: DecodingKey::from_ec_der(&public),
            key_id,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            lifetime_secs,
        })
    }

    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    /// A token for `subject` (empty: anonymous) granting `access`.
    pub fn issue(&self, subject: &str, access: Vec<AccessClaim>) -> Result<(String, u64), String> {
        let now = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.audience.clone(),
            exp: now + self.lifetime_secs,
            // A little slack for clocks of other hosts reading `nbf`.
            nbf: now.saturating_sub(10),
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())?;
        Ok((token, now))
    }

    pub fn verify(&self, token: &str) -> Result<Verified, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.validate_nbf = true;
        decode(token, &self.decoding, &v)
    }
}

/// Tokens of an external issuer, checked with its public key.
pub struct External {
    key: DecodingKey,
    validation: Validation,
}

impl External {
    pub fn new(public_key: &Path, issuer: &str, audience: &str) -> Result<External, String> {
        let pem = std::fs::read(public_key)
            .map_err(|e| format!("external issuer public key {}: {e}", public_key.display()))?;
        let (key, algorithms) = if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            (k, vec![Algorithm::ES256, Algorithm::ES384])
        } else if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            (
                k,
                vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
            )
        } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
            (k, vec![Algorithm::EdDSA])
        } else {
            return Err(format!(
                "external issuer public key {}: not an EC, RSA or Ed25519 public key in PEM",
                public_key.display()
            ));
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.validate_nbf = true;
        Ok(External { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Verified, String> {
        decode(token, &self.key, &self.validation)
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Verified, String> {
    /// `aud` may be a string or a list in other issuers' tokens; the
    /// validation checks it, so it is not read here.
    #[derive(Deserialize)]
    struct Read {
        #[serde(default)]
        sub: String,
        #[serde(default)]
        access: Vec<AccessClaim>,
    }
    let data = jsonwebtoken::decode::<Read>(token, key, validation).map_err(|e| e.to_string())?;
    Ok(Verified {
        subject: Some(data.claims.sub).filter(|s| !s.is_empty()),
        access: data.claims.access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let s = parse_scope("repository:app/web:pull,push").unwrap();
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("repository", "app/web")
        );
        assert_eq!(s.actions, ["pull", "push"]);
        let s = parse_scope("repository(plugin):x:pull").unwrap();
        assert_eq!(s.kind, "repository");
        let s = parse_scope("registry:catalog:*").unwrap();
        assert!(s.grants("registry", "catalog", "anything"));
        assert!(parse_scope("nonsense").is_none());
        assert!(parse_scope("repository::pull").is_none());
    }

    #[test]
    fn issue_and_verify() {
        let s = Signer::new(Path::new(""), "ferro", "svc", 60).unwrap();
        let grant = parse_scope("repository:app:pull").unwrap();
        let (token, _) = s.issue("alice", vec![grant.clone()]).unwrap();
        let v = s.verify(&token).unwrap();
        assert_eq!(v.subject.as_deref(), Some("alice"));
        assert_eq!(v.access, [grant]);
        // Another key, another audience, a damaged token: all refused.
        let other = Signer::new(Path::new(""), "ferro", "svc", 60).unwrap();
        assert!(other.verify(&token).is_err());
        assert!(s.verify(&format!("{token}x")).is_err());
        let (anon, _) = s.issue("", vec![]).unwrap();
        assert_eq!(s.verify(&anon).unwrap().subject, None);
    }
}
