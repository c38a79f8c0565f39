//! Authorization rules: users or groups × repository patterns × actions.
//!
//! A rule grants its actions to its users (and members of its groups) on
//! repositories matching any of its patterns. Grants add up; nothing is
//! granted unless a rule says so. With no rule at all, every authenticated
//! user may do everything (what distribution does with htpasswd alone).
//! Anonymous callers get pull everywhere when `anonymous_pull` is on, and
//! nothing else.

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobMatcher};

use super::Action;
use crate::config::AccessRule;

/// Any authenticated user, in a rule's `users`.
pub const ANY_USER: &str = "*";

/// The rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Compiled>,
    anonymous_pull: bool,
}

#[derive(Debug, Clone)]
struct Compiled {
    users: Vec<String>,
    patterns: Vec<GlobMatcher>,
    /// Whether some pattern matches every name (`**`).
    matches_all: bool,
    actions: Vec<Action>,
}

pub fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("repository pattern {pattern:?}: {e}"))
}

pub fn parse_actions(actions: &[String]) -> Result<Vec<Action>, String> {
    let mut out = Vec::new();
    for a in actions {
        match a.as_str() {
            "*" => out.extend(Action::ALL),
            other => out.push(
                Action::parse(other)
                    .ok_or_else(|| format!("unknown action {other:?} (pull, push, delete, *)"))?,
            ),
        }
    }
    Ok(out)
}

impl Rules {
    pub fn compile(
        rules: &[AccessRule],
        groups: &BTreeMap<String, Vec<String>>,
        anonymous_pull: bool,
    ) -> Result<Rules, String> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let at = |e: String| format!("auth.rules[{i}]: {e}");
            let mut users = r.users.clone();
            for g in &r.groups {
                let members = groups
                    .get(g)
                    .ok_or_else(|| at(format!("group {g:?} is not in auth.groups")))?;
                users.extend(members.iter().cloned());
            }
            if users.is_empty() {
                return Err(at("names no user and no group".into()));
            }
            if r.repositories.is_empty() {
                return Err(at("names no repository pattern".into()));
            }
            let patterns = r
                .repositories
                .iter()
                .map(|p| glob(p).map(|g| g.compile_matcher()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(at)?;
            let actions = parse_actions(&r.actions).map_err(at)?;
            if actions.is_empty() {
                return Err(at("names no action".into()));
            }
            compiled.push(Compiled {
                users,
                matches_all: r.repositories.iter().any(|p| p == "**"),
                patterns,
                actions,
            });
        }
        Ok(Rules {
            rules: compiled,
            anonymous_pull,
        })
    }

    fn applying_to<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a Compiled> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.users.iter().any(|u| u == user || u == ANY_USER))
    }

    /// Whether `user` (`None`: anonymous) may do `action` on `repo`.
    pub fn allows(&self, user: Option<&str>, repo: &str, action: Action) -> bool {
        match user {
            None => self.anonymous_pull && action == Action::Pull,
            Some(_) if self.rules.is_empty() => true,
            Some(user) => self.applying_to(user).any(|r| {
                r.actions.contains(&action) && r.patterns.iter().any(|p| p.is_match(repo))
            }),
        }
    }

    /// Whether `user` may do `action` on every repository, present and
    /// future (a rule with the pattern `**`): what registry-wide
    /// operations need (the event feed names every repository; garbage
    /// collection deletes from all of them).
    pub fn allows_everywhere(&self, user: Option<&str>, action: Action) -> bool {
        match user {
            None => false,
            Some(_) if self.rules.is_empty() => true,
            Some(user) => self
                .applying_to(user)
                .any(|r| r.matches_all && r.actions.contains(&action)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(users: &[&str], groups: &[&str], repos: &[&str], actions: &[&str]) -> AccessRule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        AccessRule {
            users: v(users),
            groups: v(groups),
            repositories: v(repos),
            actions: v(actions),
        }
    }

    #[test]
    fn grants_add_up_and_default_deny() {
        let groups = BTreeMap::from([("dev".to_owned(), vec!["bob".to_owned()])]);
        let r = Rules::compile(
            &[
                rule(&["alice"], &[], &["app/*"], &["pull", "push"]),
                rule(&[], &["dev"], &["team/**"], &["*"]),
                rule(&["*"], &[], &["public/*"], &["pull"]),
                rule(&["root"], &[], &["**"], &["pull"]),
            ],
            &groups,
            false,
        )
        .unwrap();
        assert!(r.allows(Some("alice"), "app/web", Action::Push));
        assert!(
            !r.allows(Some("alice"), "app/web/deep", Action::Pull),
            "* stays in one component"
        );
        assert!(!r.allows(Some("alice"), "app/web", Action::Delete));
        assert!(r.allows(Some("bob"), "team/a/b", Action::Delete));
        assert!(!r.allows(Some("bob"), "app/web", Action::Pull));
        assert!(r.allows(Some("carol"), "public/x", Action::Pull));
        assert!(!r.allows(None, "public/x", Action::Pull));
        assert!(r.allows_everywhere(Some("root"), Action::Pull));
        assert!(!r.allows_everywhere(Some("root"), Action::Delete));
        assert!(!r.allows_everywhere(Some("alice"), Action::Pull));
    }

    #[test]
    fn no_rules_means_authenticated_may_do_all() {
        let r = Rules::compile(&[], &BTreeMap::new(), true).unwrap();
        assert!(r.allows(Some("x"), "a", Action::Delete));
        assert!(r.allows(None, "a", Action::Pull));
        assert!(!r.allows(None, "a", Action::Push));
        assert!(!r.allows_everywhere(None, Action::Pull));
    }

    #[test]
    fn bad_rules_are_named() {
        let g = BTreeMap::new();
        let e = Rules::compile(&[rule(&[], &["nope"], &["a"], &["pull"])], &g, false).unwrap_err();
        assert!(e.contains("auth.rules[0]") && e.contains("nope"), "{e}");
        assert!(Rules::compile(&[rule(&["a"], &[], &["a"], &["write"])], &g, false).is_err());
        assert!(Rules::compile(&[rule(&["a"], &[], &["a[",], &["pull"])], &g, false).is_err());
        assert!(Rules::compile(&[rule(&["a"], &[], &[], &["pull"])], &g, false).is_err());
    }
}
