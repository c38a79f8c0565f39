//! The client of one upstream registry: manifests (`HEAD` for freshness,
//! `GET` for content, with the `Accept` list of every manifest type ferro
//! serves) and blobs (`GET`, streamed), signed in the way the upstream
//! asks: a fixed token, Basic, or the token flow (a `401` with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` sends us to the
//! realm, with Basic credentials or anonymously, for a token that is kept
//! until it expires and then sent as `Bearer`).
//!
//! Built on the HTTP client already in the build for the object store
//! (reqwest): an upstream is often several origins (Docker Hub answers
//! tokens from `auth.docker.io` and blobs by redirecting to a CDN), which
//! needs a pool, TLS and redirects that drop credentials on the way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store_http as http;
use parking_lot::Mutex;

use super::config::{MirrorConfig, UpstreamConfig};
use crate::oci::{Digest, RepoName};

/// The manifest types ferro serves, most preferred first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A token whose answer names no lifetime lasts this long (the token
/// spec's default).
const TOKEN_LIFETIME_DEFAULT: Duration = Duration::from_secs(60);
/// A token is renewed this long before it expires.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// Largest token answer read.
const TOKEN_ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Tokens kept per upstream (one per repository scope).
const TOKENS_MAX: usize = 4096;

/// Why an upstream gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No answer: refused, reset, timed out, TLS failed.
    #[error("upstream {upstream} did not answer: {reason}")]
    Unreachable { upstream: String, reason: String },
    /// An answer that is not the content: its status and what it said.
    #[error("upstream {upstream} answered {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        upstream: String,
        status: u16,
        message: String,
    },
    /// An answer that cannot be right (a manifest whose digest differs).
    #[error("upstream {upstream} sent bad content: {reason}")]
    Invalid { upstream: String, reason: String },
}

impl UpstreamError {
    /// Whether another upstream, or a later try, may answer better: no
    /// answer, 429, 5xx, bad content. A 404 or 401/403 is the upstream's
    /// word.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Unreachable { .. } | UpstreamError::Invalid { .. } => true,
            UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
        }
    }

    /// The upstream's status, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A manifest as the upstream describes it on `HEAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
}

/// A manifest fetched and checked against its digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub body: Bytes,
}

/// How requests are signed.
#[derive(Debug, Clone)]
enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
    Token(String),
}

/// One upstream registry.
pub struct Upstream {
    /// The base URL, without a trailing `/`.
    base: String,
    http: http::Client,
    credentials: Credentials,
    timeout: Duration,
    /// Bearer tokens by scope, with their expiry.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl Upstream {
    pub fn new(mirror: &MirrorConfig, config: &UpstreamConfig) -> Result<Upstream, String> {
        let mut builder = http::Client::builder()
            .connect_timeout(mirror.connect_timeout)
            .read_timeout(mirror.read_timeout)
            .user_agent(concat!("ferro/", env!("CARGO_PKG_VERSION")));
        if !config.ca.as_os_str().is_empty() {
            let pem = std::fs::read(&config.ca)
                .map_err(|e| format!("CA file {}: {e}", config.ca.display()))?;
            let certs = http::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("CA file {}: {e}", config.ca.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        let credentials = if !config.token.is_empty() {
            Credentials::Token(config.token.clone())
        } else if !config.username.is_empty() {
            Credentials::Basic {
                username: config.username.clone(),
                password: config.password.clone(),
            }
        } else {
            Credentials::Anonymous
        };
        Ok(Upstream {
            base: config.url.trim_end_matches('/').to_owned(),
            http: builder.build().map_err(|e| e.to_string())?,
            credentials,
            timeout: mirror.timeout,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The upstream's URL, as logs and the log's actor name it.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The digest of `reference` upstream, or `None` when it has no such
    /// manifest. `HEAD`: registries do not count it against pull limits.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> Result<Option<ManifestHead>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let Some(answer) = self.send(http::Method::HEAD, &path, repo).await? else {
            return Ok(None);
        };
        let digest = answer
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        match digest {
            Some(digest) => Ok(Some(ManifestHead { digest })),
            // Without the header the digest needs the body.
            None => Ok(self
                .get_manifest(repo, reference, u64::MAX)
                .await?
                .map(|m| ManifestHead { digest: m.digest })),
        }
    }

    /// The manifest `reference` (a tag or digest), read whole (at most
    /// `bytes_max`) and checked: against the digest when the reference is
    /// one, else against the `Docker-Content-Digest` the upstream sent,
    /// if any. `None` when the upstream has no such manifest.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        bytes_max: u64,
    ) -> Result<Option<FetchedManifest>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let Some(answer) = self.send(http::Method::GET, &path, repo).await? else {
            return Ok(None);
        };
        let media_type = answer
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|v| !v.is_empty());
        let announced = answer
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
        let body = self.read_bounded(answer, bytes_max).await?;
        let expected = Digest::parse(reference).ok().or(announced);
        let digest = match expected {
            Some(d) => {
                let computed = d.recompute(&body);
                if computed != d {
                    return Err(self.invalid(format!(
                        "manifest {reference} of {repo} has digest {computed}, not {d}"
                    )));
                }
                d
            }
            None => Digest::sha256_of(&body),
        };
        Ok(Some(FetchedManifest {
            digest,
            media_type,
            body,
        }))
    }

    /// The blob `digest`'s answer, its body not read yet (the caller
    /// streams it), or `None` when the upstream has no such blob.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<http::Response>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        self.send(http::Method::GET, &path, repo).await
    }

    /// Every tag of `repo` upstream (`GET /v2/<name>/tags/list`, following
    /// the `Link` header's next pages), or `None` when the upstream has no
    /// such repository. At most [`TAG_PAGES_MAX`] pages.
    pub async fn list_tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut path = format!("/v2/{repo}/tags/list");
        for _ in 0..TAG_PAGES_MAX {
            let Some(answer) = self.send(http::Method::GET, &path, repo).await? else {
                return Ok(None);
            };
            let next = answer
                .headers()
                .get(http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| next_link(v, &self.base));
            let body = self.read_bounded(answer, TAG_PAGE_BYTES_MAX).await?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| self.invalid(format!("tag list of {repo}: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => path = n,
                None => return Ok(Some(tags)),
            }
        }
        Err(self.invalid(format!(
            "tag list of {repo}: more than {TAG_PAGES_MAX} pages"
        )))
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable {
            upstream: self.base.clone(),
            reason: reason.to_string(),
        }
    }

    fn invalid(&self, reason: String) -> UpstreamError {
        UpstreamError::Invalid {
            upstream: self.base.clone(),
            reason,
        }
    }

    /// Sends a request, signing in when the upstream asks to. `None` for
    /// a 404; an error for any other answer that is not 2xx.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        repo: &RepoName,
    ) -> Result<Option<http::Response>, UpstreamError> {
        let scope = format!("repository:{repo}:pull");
        let url = format!("{}{path}", self.base);
        let mut authorization = self.authorization(&scope);
        let mut signed_in = false;
        loop {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header(http::header::ACCEPT, MANIFEST_ACCEPT);
            if let Some(a) = &authorization {
                request = request.header(http::header::AUTHORIZATION, a);
            }
            let answer = tokio::time::timeout(self.timeout, request.send())
                .await
                .map_err(|_| self.unreachable(format!("no answer within {:?}", self.timeout)))?
                .map_err(|e| self.unreachable(error_chain(&e)))?;
            let status = answer.status();
            if status.is_success() {
                return Ok(Some(answer));
            }
            if status == http::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if status == http::StatusCode::UNAUTHORIZED && !signed_in {
                let challenge = answer
                    .headers()
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Some(a) = self.sign_in(challenge.as_deref(), &scope).await? {
                    authorization = Some(a);
                    signed_in = true;
                    continue;
                }
            }
            return Err(self.status_error(answer).await);
        }
    }

    /// What to send before any challenge: a fixed token, or a bearer
    /// token kept from an earlier sign-in for this scope.
    fn authorization(&self, scope: &str) -> Option<String> {
        match &self.credentials {
            Credentials::Token(t) => Some(format!("Bearer {t}")),
            _ => {
                let tokens = self.tokens.lock();
                let (token, expiry) = tokens.get(scope)?;
                (Instant::now() + TOKEN_EXPIRY_MARGIN < *expiry).then(|| format!("Bearer {token}"))
            }
        }
    }

    /// Answers a `401`'s challenge: Basic with the credentials, or a
    /// token from the Bearer realm. `None` when there is nothing to try.
    async fn sign_in(
        &self,
        challenge: Option<&str>,
        scope: &str,
    ) -> Result<Option<String>, UpstreamError> {
        let Some(challenge) = challenge.and_then(Challenge::parse) else {
            return Ok(None);
        };
        match challenge {
            Challenge::Basic => Ok(match &self.credentials {
                Credentials::Basic { username, password } => Some(basic(username, password)),
                _ => None,
            }),
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let scope_asked = asked.unwrap_or_else(|| scope.to_owned());
                let query = {
                    let mut q = form_urlencoded::Serializer::new(String::new());
                    q.append_pair("scope", &scope_asked);
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    q.finish()
                };
                let join = if realm.contains('?') { '&' } else { '?' };
                let mut request = self.http.get(format!("{realm}{join}{query}"));
                if let Credentials::Basic { username, password } = &self.credentials {
                    request =
                        request.header(http::header::AUTHORIZATION, basic(username, password));
                }
                let answer = tokio::time::timeout(self.timeout, request.send())
                    .await
                    .map_err(|_| self.unreachable("the token realm did not answer in time"))?
                    .map_err(|e| self.unreachable(format!("token realm: {}", error_chain(&e))))?;
                if !answer.status().is_success() {
                    return Err(self.status_error(answer).await);
                }
                let body = self
                    .read_bounded(answer, TOKEN_ANSWER_BYTES_MAX as u64)
                    .await?;
                let parsed: TokenAnswer = serde_json::from_slice(&body)
                    .map_err(|e| self.invalid(format!("token answer: {e}")))?;
                let token = parsed
                    .token
                    .or(parsed.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.invalid("token answer without a token".into()))?;
                let lifetime = parsed
                    .expires_in
                    .map(Duration::from_secs)
                    .unwrap_or(TOKEN_LIFETIME_DEFAULT);
                let mut tokens = self.tokens.lock();
                if tokens.len() >= TOKENS_MAX {
                    let now = Instant::now();
                    tokens.retain(|_, (_, expiry)| *expiry > now);
                    if tokens.len() >= TOKENS_MAX {
                        tokens.clear();
                    }
                }
                tokens.insert(scope.to_owned(), (token.clone(), Instant::now() + lifetime));
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// The error for an answer that is not the content, with the first
    /// error message of its body when it has the spec's form.
    async fn status_error(&self, answer: http::Response) -> UpstreamError {
        let status = answer.status().as_u16();
        let body = self.read_bounded(answer, 8192).await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let e = v.get("errors")?.get(0)?;
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                let message = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                Some(format!("{code} {message}").trim().to_owned())
            })
            .unwrap_or_default();
        UpstreamError::Status {
            upstream: self.base.clone(),
            status,
            message,
        }
    }

    /// A whole answer body, at most `bytes_max` bytes.
    async fn read_bounded(
        &self,
        mut answer: http::Response,
        bytes_max: u64,
    ) -> Result<Bytes, UpstreamError> {
        if answer.content_length().is_some_and(|l| l > bytes_max) {
            return Err(self.invalid(format!("answer is over the limit of {bytes_max} bytes")));
        }
        let mut body = Vec::new();
        let read = async {
            while let Some(chunk) = answer.chunk().await? {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > bytes_max {
                    return Ok(false);
                }
            }
            Ok::<bool, http::Error>(true)
        };
        match tokio::time::timeout(self.timeout, read).await {
            Err(_) => Err(self.unreachable("answer body did not arrive in time")),
            Ok(Err(e)) => Err(self.unreachable(error_chain(&e))),
            Ok(Ok(false)) => {
                Err(self.invalid(format!("answer is over the limit of {bytes_max} bytes")))
            }
            Ok(Ok(true)) => Ok(Bytes::from(body)),
        }
    }
}

/// Most pages of one tag list followed: a bound on an upstream that
/// links pages in a circle.
pub const TAG_PAGES_MAX: usize = 1000;
/// Largest page of a tag list read.
const TAG_PAGE_BYTES_MAX: u64 = 16 << 20;

/// The path and query of a `Link: <…>; rel="next"` header, relative to
/// the upstream (an absolute link must be on the upstream's own origin:
/// credentials are not sent elsewhere).
fn next_link(header: &str, base: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let path = match target.strip_prefix(base) {
            Some(rest) => rest,
            None => target,
        };
        (is_next && path.starts_with('/')).then(|| path.to_owned())
    })
}

/// An error and its causes on one line (reqwest's own says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn basic(username: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm").filter(|r| r.starts_with("http"))?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `k="v", k2=v2` pairs; a quoted value may hold commas (scopes do).
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let name = name.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_owned(), &quoted[end + 1..]),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_owned(), &after[end..]),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.push((name, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_pages_come_from_the_link_header() {
        let base = "http://127.0.0.1:5001";
        let next = |h: &str| next_link(h, base);
        assert_eq!(
            next(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(
            next(r#"<http://127.0.0.1:5001/v2/a/tags/list?last=b>; rel=next"#).as_deref(),
            Some("/v2/a/tags/list?last=b")
        );
        assert_eq!(
            next(r#"<https://elsewhere/v2/a/tags/list>; rel="next""#),
            None
        );
        assert_eq!(next(r#"</v2/a/tags/list?last=b>; rel="prev""#), None);
    }

    #[test]
    fn challenges_parse() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(
            Challenge::parse("bearer realm=http://h/t, service=s"),
            Some(Challenge::Bearer {
                realm: "http://h/t".into(),
                service: Some("s".into()),
                scope: None,
            })
        );
    }

    #[test]
    fn only_missing_answers_and_overload_are_transient() {
        let status = |status| UpstreamError::Status {
            upstream: "u".into(),
            status,
            message: String::new(),
        };
        assert!(status(429).is_transient());
        assert!(status(503).is_transient());
        assert!(!status(403).is_transient());
        assert!(UpstreamError::Unreachable {
            upstream: "u".into(),
            reason: "refused".into()
        }
        .is_transient());
    }
}
