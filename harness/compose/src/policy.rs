//! Which imports a customer's logic component may keep.
//!
//! A rule names a WIT package (`wasi:random`, every interface of it) or one interface
//! (`wasi:io/poll`); versions are ignored. The default allows `wasi:logging`, `wasi:clocks`,
//! `wasi:random` and `wasi:io/poll` (the clocks' timers return `wasi:io` pollables, so the clocks
//! cannot come from the host without it). `sluice:pipeline/types` (the records' shape) is always
//! allowed; every other `sluice:` interface is always forbidden, so logic can never reach the sink
//! except through the trusted `out` component.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::world::{Item, World};

/// A rule that could not be parsed.
#[derive(Debug, Error)]
#[error("`{0}` is not an import rule: write `namespace:package` or `namespace:package/interface`")]
pub struct RuleError(String);

/// One allowed package or interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `namespace:package`, e.g. `wasi:clocks`.
    package: String,
    /// One interface of the package, or every interface when `None`.
    interface: Option<String>,
}

impl Rule {
    fn matches(&self, name: &ImportName<'_>) -> bool {
        self.package == name.package
            && self
                .interface
                .as_deref()
                .is_none_or(|interface| interface == name.interface)
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unversioned = text.split('@').next().unwrap_or_default();
        let (package, interface) = match unversioned.split_once('/') {
            Some((package, "*")) => (package, None),
            Some((package, interface)) => (package, Some(interface.to_string())),
            None => (unversioned, None),
        };
        let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let package_valid = package
            .split_once(':')
            .is_some_and(|(namespace, name)| valid(namespace) && valid(name));
        if !package_valid || interface.as_deref().is_some_and(|i| !valid(i)) {
            return Err(RuleError(text.to_string()));
        }
        Ok(Self {
            package: package.to_string(),
            interface,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.interface {
            Some(interface) => write!(f, "{}/{interface}", self.package),
            None => write!(f, "{}/*", self.package),
        }
    }
}

/// `namespace:package/interface@version` split up.
struct ImportName<'a> {
    package: &'a str,
    interface: &'a str,
}

impl<'a> ImportName<'a> {
    fn parse(name: &'a str) -> Option<Self> {
        let unversioned = name.split('@').next()?;
        let (package, interface) = unversioned.split_once('/')?;
        package.contains(':').then_some(Self { package, interface })
    }
}

/// The import policy applied to customer logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow: DEFAULT_ALLOW
                .iter()
                .map(|rule| rule.parse().expect("the default rules parse"))
                .collect(),
        }
    }
}

/// The rules of [`Policy::default`].
pub const DEFAULT_ALLOW: &[&str] = &["wasi:logging", "wasi:clocks", "wasi:random", "wasi:io/poll"];

impl Policy {
    /// A policy allowing exactly `rules` (plus `sluice:pipeline/types`).
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { allow: rules }
    }

    /// The default policy plus `rules`.
    pub fn default_and(rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut policy = Self::default();
        policy.allow.extend(rules);
        policy
    }

    /// The allowed packages and interfaces.
    pub fn rules(&self) -> &[Rule] {
        &self.allow
    }

    /// Whether logic may import `name` (e.g. `wasi:http/types@0.2.10`).
    pub fn allows(&self, name: &str) -> bool {
        let Some(parsed) = ImportName::parse(name) else {
            return false;
        };
        if parsed.package == "sluice:pipeline" && parsed.interface == "types" {
            return true;
        }
        if parsed.package.starts_with("sluice:") {
            return false;
        }
        self.allow.iter().any(|rule| rule.matches(&parsed))
    }

    /// The imports of `logic` this policy forbids, in the component's order.
    pub fn forbidden<'w>(&self, logic: &'w World) -> Vec<&'w Item> {
        logic
            .imports
            .iter()
            .filter(|item| !item.interface || !self.allows(&item.name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_allows_logging_clocks_random_and_poll_only() {
        let policy = Policy::default();
        for name in [
            "wasi:logging/logging@0.1.0-draft",
            "wasi:clocks/monotonic-clock@0.2.12",
            "wasi:clocks/wall-clock@0.2.0",
            "wasi:random/random@0.2.9",
            "wasi:random/insecure-seed@0.2.9",
            "wasi:io/poll@0.2.12",
            "sluice:pipeline/types@0.1.0",
        ] {
            assert!(policy.allows(name), "{name}");
        }
        for name in [
            "wasi:io/streams@0.2.12",
            "wasi:io/error@0.2.12",
            "wasi:http/outgoing-handler@0.2.10",
            "wasi:sockets/tcp@0.2.0",
            "wasi:filesystem/preopens@0.2.0",
            "wasi:cli/environment@0.2.0",
            "sluice:pipeline/sink@0.1.0",
            "sluice:pipeline/ingest@0.1.0",
            "sluice:harness/limits@0.1.0",
            "not-an-interface",
        ] {
            assert!(!policy.allows(name), "{name}");
        }
    }

    #[test]
    fn rules_name_a_package_or_an_interface() {
        let policy = Policy::new(vec!["wasi:cli/stdout".parse().unwrap()]);
        assert!(policy.allows("wasi:cli/stdout@0.2.0"));
        assert!(!policy.allows("wasi:cli/stderr@0.2.0"));
        assert!(!policy.allows("wasi:clocks/wall-clock@0.2.0"));
        let policy = Policy::new(vec!["wasi:cli/*".parse().unwrap()]);
        assert!(policy.allows("wasi:cli/stderr@0.2.0"));
        assert_eq!(policy.rules()[0].to_string(), "wasi:cli/*");
    }

    #[test]
    fn sluice_interfaces_other_than_types_cannot_be_allowed() {
        let policy = Policy::new(vec!["sluice:pipeline".parse().unwrap()]);
        assert!(!policy.allows("sluice:pipeline/sink@0.1.0"));
        assert!(policy.allows("sluice:pipeline/types@0.1.0"));
    }

    #[test]
    fn malformed_rules_are_refused() {
        for rule in ["", "wasi", "wasi:", "a:b:c", "wasi:io/", "wasi:io/x y"] {
            assert!(rule.parse::<Rule>().is_err(), "{rule:?}");
        }
    }
}
