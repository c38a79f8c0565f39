//! Access control: who a request comes from (authentication), and whether
//! they may do what it asks (authorization).
//!
//! - `htpasswd`: users and bcrypt hashes, for HTTP Basic and the token
//!   endpoint;
//! - `token`: Bearer tokens (JWT) as distribution's token flow uses them,
//!   ours (signed here) and an external issuer's;
//! - `rules`: users or groups × repository globs × pull/push/delete.
//!
//! The HTTP layer asks two questions per request: [`Auth::identify`] (the
//! caller, from the `Authorization` header) and [`Auth::check`] (whether
//! the caller has what the route [`Need`]s). A refusal says whether the
//! client should authenticate (401 with a challenge, [`Auth::challenge`])
//! or is simply not allowed (403 DENIED).
//!
//! With `scheme = "none"` (the default) nothing is checked.

pub mod htpasswd;
pub mod rules;
pub mod token;

use base64::Engine as _;

use crate::config::{AuthConfig, AuthScheme};
pub use htpasswd::Htpasswd;
pub use rules::Rules;
pub use token::{AccessClaim, External, Signer};

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// What a route needs of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Anything but no credentials at all: `/v2/`, extension discovery.
    Authenticated,
    /// Every one of `actions` on `repo`.
    Repository { repo: String, actions: Vec<Action> },
    /// `/v2/_catalog`: an authenticated caller (a token with
    /// `registry:catalog:*`); the listing is then filtered to what the
    /// caller may pull.
    Catalog,
    /// A registry-wide operation: an authenticated caller whose rules grant
    /// the action on `**` (pull for the event feed, which names every
    /// repository; delete for garbage collection). A token must also carry
    /// `registry:catalog:*`.
    Everywhere(Action),
}

impl Need {
    /// The scope a client should ask a token for.
    pub fn scope(&self) -> Option<String> {
        match self {
            Need::Authenticated => None,
            Need::Repository { repo, actions } => {
                let mut names: Vec<&str> = Vec::new();
                // Pushing clients also read (HEAD before PUT), so a push
                // challenge asks for both, as distribution's does.
                if actions.contains(&Action::Push) && !actions.contains(&Action::Pull) {
                    names.push("pull");
                }
                names.extend(actions.iter().map(|a| a.as_str()));
                Some(format!("repository:{repo}:{}", names.join(",")))
            }
            Need::Catalog | Need::Everywhere(_) => Some("registry:catalog:*".into()),
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone)]
enum Credentials {
    None,
    Basic,
    Token {
        access: Vec<AccessClaim>,
        /// Issued by this registry (so its rules say what more it could
        /// get), or by an external issuer.
        own: bool,
    },
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated user; `None` for anonymous (also an anonymous
    /// token).
    pub user: Option<String>,
    credentials: Credentials,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            user: None,
            credentials: Credentials::None,
        }
    }

    /// A user who logged in to the web UI with their htpasswd password:
    /// the same rules apply as to Basic credentials.
    pub fn logged_in(user: &str) -> Caller {
        Caller {
            user: Some(user.to_owned()),
            credentials: Credentials::Basic,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials where some are needed: 401 with a challenge.
    Unauthenticated,
    /// Wrong user or password: 401 with a challenge.
    BadCredentials,
    /// A token that does not verify (signature, expiry, audience): 401,
    /// `error="invalid_token"`.
    InvalidToken,
    /// A valid token that lacks the scope: 401,
    /// `error="insufficient_scope"`, so the client fetches a wider one.
    InsufficientScope,
    /// Authenticated, and the rules do not allow it: 403 DENIED.
    Denied,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "authentication required",
            Refusal::BadCredentials => "invalid user name or password",
            Refusal::InvalidToken => "invalid or expired token",
            Refusal::InsufficientScope => "the token does not grant this access",
            Refusal::Denied => "requested access to the resource is denied",
        }
    }
}

/// Access control, built once from the config.
pub struct Auth {
    scheme: AuthScheme,
    realm: String,
    htpasswd: Htpasswd,
    rules: Rules,
    signer: Option<Signer>,
    external: Option<External>,
    token_realm: String,
    service: String,
}

/// Checks of the `[auth]` section that need no file.
pub fn validate_config(c: &AuthConfig) -> Result<(), String> {
    let no_htpasswd = c.htpasswd.as_os_str().is_empty();
    let no_external = c.token.external.public_key.as_os_str().is_empty();
    match c.scheme {
        AuthScheme::None if !no_htpasswd || !c.rules.is_empty() => {
            return Err(
                "auth.htpasswd or auth.rules is set but auth.scheme is \"none\": \
                 set scheme = \"basic\" or \"token\", or nothing would be checked"
                    .into(),
            );
        }
        AuthScheme::Basic if no_htpasswd => {
            return Err("auth.scheme = \"basic\" needs auth.htpasswd".into())
        }
        AuthScheme::Token if no_htpasswd && no_external => {
            return Err(
                "auth.scheme = \"token\" needs auth.htpasswd (for the built-in token endpoint) \
                 or auth.token.external.public_key"
                    .into(),
            )
        }
        _ => {}
    }
    if !no_external && c.token.external.issuer.is_empty() {
        return Err("auth.token.external.issuer must be set with its public_key".into());
    }
    if c.token.lifetime_secs == 0 {
        return Err("auth.token.lifetime_secs must be at least 1".into());
    }
    Rules::compile(&c.rules, &c.groups, c.anonymous_pull).map(|_| ())
}

impl Auth {
    /// No access control: every check passes.
    pub fn disabled() -> Auth {
        Auth {
            scheme: AuthScheme::None,
            realm: String::new(),
            htpasswd: Htpasswd::default(),
            rules: Rules::default(),
            signer: None,
            external: None,
            token_realm: String::new(),
            service: String::new(),
        }
    }

    /// Loads the htpasswd file and keys the config names.
    pub fn from_config(c: &AuthConfig) -> Result<Auth, String> {
        validate_config(c)?;
        if c.scheme == AuthScheme::None {
            return Ok(Auth::disabled());
        }
        let htpasswd = if c.htpasswd.as_os_str().is_empty() {
            Htpasswd::default()
        } else {
            Htpasswd::load(&c.htpasswd)?
        };
        let t = &c.token;
        let (signer, external) = if c.scheme == AuthScheme::Token {
            let external = if t.external.public_key.as_os_str().is_empty() {
                None
            } else {
                let audience = if t.external.audience.is_empty() {
                    &t.service
                } else {
                    &t.external.audience
                };
                Some(External::new(
                    &t.external.public_key,
                    &t.external.issuer,
                    audience,
                )?)
            };
            let signer = Signer::new(&t.signing_key, &t.issuer, &t.service, t.lifetime_secs)?;
            (Some(signer), external)
        } else {
            (None, None)
        };
        Ok(Auth {
            scheme: c.scheme,
            realm: c.realm.clone(),
            htpasswd,
            rules: Rules::compile(&c.rules, &c.groups, c.anonymous_pull)?,
            signer,
            external,
            token_realm: t.realm.clone(),
            service: t.service.clone(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.scheme != AuthScheme::None
    }

    pub fn scheme(&self) -> AuthScheme {
        self.scheme
    }

    pub fn users(&self) -> usize {
        self.htpasswd.len()
    }

    /// The token issuer, when the token flow is on.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Who the `Authorization` header says the caller is.
    pub async fn identify(&self, authorization: Option<&str>) -> Result<Caller, Refusal> {
        let Some(value) = authorization.filter(|_| self.enabled()) else {
            return Ok(Caller::anonymous());
        };
        let (kind, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        if kind.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(rest).ok_or(Refusal::BadCredentials)?;
            if self.htpasswd.verify(&user, &password).await {
                return Ok(Caller {
                    user: Some(user),
                    credentials: Credentials::Basic,
                });
            }
            return Err(Refusal::BadCredentials);
        }
        if kind.eq_ignore_ascii_case("bearer") && self.scheme == AuthScheme::Token {
            let token = rest.trim();
            if let Some(v) = self.signer.as_ref().and_then(|s| s.verify(token).ok()) {
                return Ok(Caller {
                    user: v.subject,
                    credentials: Credentials::Token {
                        access: v.access,
                        own: true,
                    },
                });
            }
            if let Some(v) = self.external.as_ref().and_then(|e| e.verify(token).ok()) {
                return Ok(Caller {
                    user: v.subject,
                    credentials: Credentials::Token {
                        access: v.access,
                        own: false,
                    },
                });
            }
            return Err(Refusal::InvalidToken);
        }
        Err(match self.scheme {
            AuthScheme::Token => Refusal::InvalidToken,
            _ => Refusal::BadCredentials,
        })
    }

    /// Checks the user name and password of the token endpoint's client.
    pub async fn verify_password(&self, user: &str, password: &str) -> bool {
        self.htpasswd.verify(user, password).await
    }

    /// Whether `caller` may do `action` on `repo`.
    pub fn permits(&self, caller: &Caller, repo: &str, action: Action) -> bool {
        if !self.enabled() {
            return true;
        }
        match &caller.credentials {
            Credentials::None | Credentials::Basic => {
                self.rules.allows(caller.user.as_deref(), repo, action)
            }
            Credentials::Token { access, .. } => access
                .iter()
                .any(|a| a.grants("repository", repo, action.as_str())),
        }
    }

    /// Whether `repo` shows in `caller`'s catalog: what their rules let
    /// them pull.
    pub fn lists(&self, caller: &Caller, repo: &str) -> bool {
        !self.enabled()
            || self
                .rules
                .allows(caller.user.as_deref(), repo, Action::Pull)
    }

    /// Whether `caller` may do `action` on every repository (a rule on
    /// `**`).
    pub fn everywhere(&self, caller: &Caller, action: Action) -> bool {
        !self.enabled() || self.rules.allows_everywhere(caller.user.as_deref(), action)
    }

    fn has_catalog_scope(caller: &Caller) -> bool {
        match &caller.credentials {
            Credentials::None => false,
            Credentials::Basic => true,
            Credentials::Token { access, .. } => {
                access.iter().any(|a| a.grants("registry", "catalog", "*"))
            }
        }
    }

    /// Whether `caller` has what `need` asks.
    pub fn check(&self, caller: &Caller, need: &Need) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        let anonymous = matches!(caller.credentials, Credentials::None);
        match need {
            Need::Authenticated if anonymous => Err(Refusal::Unauthenticated),
            Need::Authenticated => Ok(()),
            Need::Repository { repo, actions } => {
                for &action in actions {
                    if self.permits(caller, repo, action) {
                        continue;
                    }
                    return Err(match &caller.credentials {
                        Credentials::None => Refusal::Unauthenticated,
                        Credentials::Basic => Refusal::Denied,
                        // Our token: if our rules would grant it, a wider
                        // token will do; otherwise no token will.
                        Credentials::Token { own: true, .. }
                            if caller.user.is_some()
                                && !self.rules.allows(caller.user.as_deref(), repo, action) =>
                        {
                            Refusal::Denied
                        }
                        Credentials::Token { .. } => Refusal::InsufficientScope,
                    });
                }
                Ok(())
            }
            Need::Catalog | Need::Everywhere(_) if caller.user.is_none() => Err(if anonymous {
                Refusal::Unauthenticated
            } else {
                Refusal::InsufficientScope
            }),
            Need::Catalog | Need::Everywhere(_) if !Self::has_catalog_scope(caller) => {
                Err(Refusal::InsufficientScope)
            }
            Need::Catalog => Ok(()),
            Need::Everywhere(action) if self.everywhere(caller, *action) => Ok(()),
            Need::Everywhere(_) => Err(Refusal::Denied),
        }
    }

    /// The `WWW-Authenticate` value of a 401 for `need`. `origin` is
    /// `<scheme>://<host>` of the request, for the built-in token realm.
    pub fn challenge(&self, need: &Need, refusal: Refusal, origin: &str) -> String {
        match self.scheme {
            AuthScheme::Token => {
                let realm = if self.token_realm.is_empty() {
                    format!("{origin}/auth/token")
                } else {
                    self.token_realm.clone()
                };
                let mut c = format!(
                    "Bearer realm=\"{}\",service=\"{}\"",
                    quote(&realm),
                    quote(&self.service)
                );
                if let Some(scope) = need.scope() {
                    c.push_str(&format!(",scope=\"{}\"", quote(&scope)));
                }
                match refusal {
                    Refusal::InvalidToken => c.push_str(",error=\"invalid_token\""),
                    Refusal::InsufficientScope => c.push_str(",error=\"insufficient_scope\""),
                    _ => {}
                }
                c
            }
            _ => self.basic_challenge(),
        }
    }

    /// The Basic challenge (the token endpoint's, and the API's under
    /// `scheme = "basic"`).
    pub fn basic_challenge(&self) -> String {
        format!("Basic realm=\"{}\"", quote(&self.realm))
    }

    /// What a token asked for with `requested` scopes may grant `user`
    /// (`None`: anonymous): each scope cut down to what the rules allow.
    pub fn grant(&self, user: Option<&str>, requested: &[AccessClaim]) -> Vec<AccessClaim> {
        let mut granted: Vec<AccessClaim> = Vec::new();
        for scope in requested {
            let actions: Vec<String> = match scope.kind.as_str() {
                "repository" if crate::oci::RepoName::parse(&scope.name).is_ok() => {
                    let mut wanted: Vec<Action> = Vec::new();
                    for a in &scope.actions {
                        match a.as_str() {
                            "*" => wanted.extend(Action::ALL),
                            other => wanted.extend(Action::parse(other)),
                        }
                    }
                    wanted.sort();
                    wanted.dedup();
                    wanted
                        .into_iter()
                        .filter(|&a| self.rules.allows(user, &scope.name, a))
                        .map(|a| a.as_str().to_owned())
                        .collect()
                }
                "registry" if scope.name == "catalog" && user.is_some() => vec!["*".to_owned()],
                _ => Vec::new(),
            };
            if actions.is_empty() {
                continue;
            }
            match granted
                .iter_mut()
                .find(|g| g.kind == scope.kind && g.name == scope.name)
            {
                Some(g) => {
                    for a in actions {
                        if !g.actions.contains(&a) {
                            g.actions.push(a);
                        }
                    }
                }
                None => granted.push(AccessClaim {
                    kind: scope.kind.clone(),
                    name: scope.name.clone(),
                    actions,
                }),
            }
        }
        granted
    }
}

/// `user:password` from a Basic credential.
pub fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A challenge parameter's value, with `"` and `\` escaped.
fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessRule;

    fn config(scheme: AuthScheme) -> (AuthConfig, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        use std::io::Write;
        for (u, p) in [("alice", "a"), ("bob", "b")] {
            writeln!(file, "{u}:{}", bcrypt::hash(p, 4).unwrap()).unwrap();
        }
        let rule = |u: &str, r: &str, a: &[&str]| AccessRule {
            users: vec![u.into()],
            groups: vec![],
            repositories: vec![r.into()],
            actions: a.iter().map(|s| s.to_string()).collect(),
        };
        let c = AuthConfig {
            scheme,
            htpasswd: file.path().to_owned(),
            rules: vec![rule("alice", "**", &["*"]), rule("bob", "app", &["pull"])],
            ..AuthConfig::default()
        };
        (c, file)
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    fn push(repo: &str) -> Need {
        Need::Repository {
            repo: repo.into(),
            actions: vec![Action::Push],
        }
    }

    #[tokio::test]
    async fn basic_scheme() {
        let (c, _f) = config(AuthScheme::Basic);
        let auth = Auth::from_config(&c).unwrap();
        let anon = auth.identify(None).await.unwrap();
        assert_eq!(
            auth.check(&anon, &push("app")),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            auth.identify(Some(&basic("alice", "x"))).await.unwrap_err(),
            Refusal::BadCredentials
        );
        let bob = auth.identify(Some(&basic("bob", "b"))).await.unwrap();
        assert_eq!(auth.check(&bob, &push("app")), Err(Refusal::Denied));
        assert_eq!(
            auth.check(&bob, &Need::Everywhere(Action::Pull)),
            Err(Refusal::Denied)
        );
        let alice = auth.identify(Some(&basic("alice", "a"))).await.unwrap();
        assert_eq!(auth.check(&alice, &push("app")), Ok(()));
        assert_eq!(
            auth.check(&alice, &Need::Everywhere(Action::Delete)),
            Ok(())
        );
        assert_eq!(
            auth.challenge(&push("app"), Refusal::Unauthenticated, "http://h"),
            "Basic realm=\"ferro\""
        );
    }

    #[tokio::test]
    async fn token_scheme() {
        let (c, _f) = config(AuthScheme::Token);
        let auth = Auth::from_config(&c).unwrap();
        let signer = auth.signer().unwrap();
        let asked = [token::parse_scope("repository:app:pull,push").unwrap()];
        let bob_grant = auth.grant(Some("bob"), &asked);
        assert_eq!(bob_grant[0].actions, ["pull"]);
        let (t, _) = signer.issue("bob", bob_grant).unwrap();
        let bob = auth.identify(Some(&format!("Bearer {t}"))).await.unwrap();
        assert_eq!(bob.user.as_deref(), Some("bob"));
        assert_eq!(auth.check(&bob, &push("app")), Err(Refusal::Denied));
        let pull_only = auth.grant(
            Some("alice"),
            &[token::parse_scope("repository:app:pull").unwrap()],
        );
        let (t, _) = signer.issue("alice", pull_only).unwrap();
        let alice = auth.identify(Some(&format!("Bearer {t}"))).await.unwrap();
        assert_eq!(
            auth.check(&alice, &push("app")),
            Err(Refusal::InsufficientScope)
        );
        assert_eq!(
            auth.challenge(&push("app"), Refusal::InsufficientScope, "https://r:5000"),
            "Bearer realm=\"https://r:5000/auth/token\",service=\"ferro\",\
             scope=\"repository:app:pull,push\",error=\"insufficient_scope\""
        );
        assert_eq!(
            auth.identify(Some("Bearer nonsense")).await.unwrap_err(),
            Refusal::InvalidToken
        );
        assert!(auth.grant(None, &asked).is_empty());
        let catalog = [token::parse_scope("registry:catalog:*").unwrap()];
        assert!(auth.grant(None, &catalog).is_empty());
        assert_eq!(auth.grant(Some("bob"), &catalog).len(), 1);
    }

    #[test]
    fn config_checks() {
        let mut c = AuthConfig {
            htpasswd: "x".into(),
            ..AuthConfig::default()
        };
        assert!(validate_config(&c).is_err(), "htpasswd without a scheme");
        c.scheme = AuthScheme::Basic;
        assert!(validate_config(&c).is_ok());
        c.htpasswd = Default::default();
        assert!(validate_config(&c).is_err());
        assert!(validate_config(&AuthConfig::default()).is_ok());
    }
}
