//! The route table: which link serves a request, decided the same way every time.
//!
//! A route is a link's (host or any host, path prefix, methods or any method). A request's path is
//! normalized first ([`crate::path`]) and matched case-insensitively. It goes to:
//! 1. routes for its host before routes for any host;
//! 2. among those, the longest prefix matching its path on a segment boundary (`/orders` matches
//!    `/orders` and `/orders/7`, not `/orders-old`);
//! 3. within that (host, prefix), the route listing the request's method before a route taking
//!    any method; if neither takes it, 405.
//!
//! Two routes with the same host (or both any host), the same prefix and overlapping methods
//! (both any, or a method in common) collide: the second link is refused, naming the first.
//!
//! A route may lie under another link's prefix (same host, or both any host) only when that
//! route declares it in `nested_routes`: the nested route would take part of its requests. The
//! rule holds for every pair of routes, whichever link came first, so a set of links that is
//! accepted in one order is accepted in any order (as after a provider restart).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use hyper::Method;
use sluice_provider_core::{Delivery, LinkKey};

use crate::config::{strictly_under, RouteConfig};
use crate::metrics::RouteMetrics;

/// One link's route, with what serves it.
#[derive(Debug)]
pub struct Route {
    /// The link's route config.
    pub config: RouteConfig,
    /// The link's way to its component.
    pub delivery: Delivery,
    /// Request counters of this route.
    pub metrics: RouteMetrics,
}

impl Route {
    /// The link that owns this route.
    pub fn link(&self) -> &LinkKey {
        self.delivery.link()
    }

    fn overlaps(&self, other: &RouteConfig) -> bool {
        match (&self.config.methods, &other.methods) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => false,
        }
    }
}

/// A route, written the way errors and labels show it: `POST,PUT /orders (any host)`.
pub struct RouteDisplay<'a>(pub &'a RouteConfig);

impl fmt::Display for RouteDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        match &c.methods {
            None => f.write_str("*")?,
            Some(methods) => {
                let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                f.write_str(&names.join(","))?;
            }
        }
        write!(f, " {}", c.prefix)?;
        match &c.host {
            None => f.write_str(" (any host)"),
            Some(host) => write!(f, " (host {host})"),
        }
    }
}

/// Why a route was not added.
#[derive(Debug, thiserror::Error)]
pub enum RouteConflict {
    /// Same host scope, same prefix, overlapping methods.
    #[error("route {route} collides with the route {existing} of {owner}")]
    Collides {
        /// The route asked for.
        route: String,
        /// The route already there.
        existing: String,
        /// The link that owns it.
        owner: LinkKey,
    },
    /// The route lies under an existing route's prefix, which does not list it in
    /// `nested_routes`.
    #[error(
        "route {route} lies under the route {existing} of {owner}, whose `nested_routes` does not list `{prefix}`"
    )]
    Under {
        /// The route asked for.
        route: String,
        /// The route it lies under.
        existing: String,
        /// The link that owns it.
        owner: LinkKey,
        /// The prefix of the route asked for.
        prefix: String,
    },
    /// An existing route lies under the route's prefix, and the route does not list it in
    /// `nested_routes`.
    #[error(
        "route {route} encloses the route {existing} of {owner}; list `{prefix}` (or `*`) in its `nested_routes` to allow that"
    )]
    Encloses {
        /// The route asked for.
        route: String,
        /// The route under it.
        existing: String,
        /// The link that owns it.
        owner: LinkKey,
        /// The prefix of the route under it.
        prefix: String,
    },
}

impl RouteConflict {
    /// The link whose route is in the way.
    pub fn owner(&self) -> &LinkKey {
        match self {
            Self::Collides { owner, .. } | Self::Under { owner, .. } | Self::Encloses { owner, .. } => owner,
        }
    }
}

/// What a request matched.
#[derive(Debug)]
pub enum Lookup {
    /// This route serves it.
    Found(Arc<Route>),
    /// A route has this host and prefix but takes none of the request's method; these it takes.
    MethodNotAllowed(Vec<Method>),
    /// No route.
    NotFound,
}

type Group = Vec<Arc<Route>>;

/// Every route, by (host, prefix). Routes come and go while requests are served.
#[derive(Debug, Default)]
pub struct Router {
    table: RwLock<HashMap<(Option<String>, String), Group>>,
}

/// The prefixes a path matches, longest first: `/a/b/` gives `/a/b`, `/a`, `/`.
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let first = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    std::iter::successors(Some(first), |p| {
        (*p != "/").then(|| match p.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &p[..i],
        })
    })
}

/// A route of `table` (other than `link`'s own) in `config`'s host scope that nests with `config`
/// without the outer one declaring the inner one in `nested_routes`.
fn nesting_conflict(
    table: &HashMap<(Option<String>, String), Group>,
    config: &RouteConfig,
    link: Option<&LinkKey>,
) -> Option<RouteConflict> {
    let undeclared = |outer: &RouteConfig, inner: &RouteConfig| {
        strictly_under(&inner.prefix, &outer.prefix) && !outer.nested_routes.allows(&inner.prefix)
    };
    let existing = table
        .iter()
        .filter(|((host, _), _)| *host == config.host)
        .flat_map(|(_, group)| group)
        .filter(|r| Some(r.link()) != link)
        .find(|r| undeclared(&r.config, config) || undeclared(config, &r.config))?;
    let route = RouteDisplay(config).to_string();
    let other = RouteDisplay(&existing.config).to_string();
    let owner = existing.link().clone();
    Some(if undeclared(&existing.config, config) {
        RouteConflict::Under {
            route,
            existing: other,
            owner,
            prefix: config.prefix.clone(),
        }
    } else {
        RouteConflict::Encloses {
            route,
            existing: other,
            owner,
            prefix: existing.config.prefix.clone(),
        }
    })
}

/// What keeps `config` out of `table`: a route (other than `link`'s own) it collides or nests
/// with undeclared.
fn conflict(
    table: &HashMap<(Option<String>, String), Group>,
    config: &RouteConfig,
    link: Option<&LinkKey>,
) -> Option<RouteConflict> {
    if let Some(conflict) = nesting_conflict(table, config, link) {
        return Some(conflict);
    }
    let group = table.get(&(config.host.clone(), config.prefix.clone()))?;
    let existing = group
        .iter()
        .filter(|r| Some(r.link()) != link)
        .find(|r| r.overlaps(config))?;
    Some(RouteConflict::Collides {
        route: RouteDisplay(config).to_string(),
        existing: RouteDisplay(&existing.config).to_string(),
        owner: existing.link().clone(),
    })
}

impl Router {
    /// Whether `config` could be inserted for `link` once `link`'s own route is removed: the
    /// check before a link put again replaces its route.
    pub fn check(&self, config: &RouteConfig, link: &LinkKey) -> Result<(), RouteConflict> {
        let table = self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        conflict(&table, config, Some(link)).map_or(Ok(()), Err)
    }

    /// Adds a route, unless it collides with one already there or nests with one undeclared.
    pub fn insert(&self, config: RouteConfig, delivery: Delivery) -> Result<Arc<Route>, RouteConflict> {
        let mut table = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(conflict) = conflict(&table, &config, None) {
            return Err(conflict);
        }
        let group = table.entry((config.host.clone(), config.prefix.clone())).or_default();
        let route = Arc::new(Route {
            metrics: RouteMetrics::default(),
            config,
            delivery,
        });
        group.push(Arc::clone(&route));
        Ok(route)
    }

    /// Removes a route; requests already past routing finish.
    pub fn remove(&self, route: &Arc<Route>) {
        let mut table = self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (route.config.host.clone(), route.config.prefix.clone());
        if let Some(group) = table.get_mut(&key) {
            group.retain(|r| !Arc::ptr_eq(r, route));
            if group.is_empty() {
                table.remove(&key);
            }
        }
    }

    /// The route for a request (`host` lowercase, without port; `path` normalized by
    /// [`crate::path::normalize`], any case).
    pub fn lookup(&self, host: Option<&str>, path: &str, method: &Method) -> Lookup {
        if !path.starts_with('/') {
            return Lookup::NotFound;
        }
        let path = path.to_ascii_lowercase();
        let table = self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hosts: &[Option<&str>] = if host.is_some() { &[host, None] } else { &[None] };
        let mut key: (Option<String>, String) = (None, String::new());
        for host in hosts {
            key.0 = host.map(str::to_string);
            for prefix in prefixes(&path) {
                prefix.clone_into(&mut key.1);
                let Some(group) = table.get(&key) else {
                    continue;
                };
                let explicit = group
                    .iter()
                    .find(|r| r.config.methods.as_ref().is_some_and(|m| m.contains(method)));
                let any = || group.iter().find(|r| r.config.methods.is_none());
                return match explicit.or_else(any) {
                    Some(route) => Lookup::Found(Arc::clone(route)),
                    None => {
                        let mut allowed: Vec<Method> = group
                            .iter()
                            .flat_map(|r| r.config.methods.clone().unwrap_or_default())
                            .collect();
                        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                        allowed.dedup();
                        Lookup::MethodNotAllowed(allowed)
                    }
                };
            }
        }
        Lookup::NotFound
    }

    /// Every route, sorted by prefix, host and methods (for `/metrics`).
    pub fn routes(&self) -> Vec<Arc<Route>> {
        let table = self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut routes: Vec<Arc<Route>> = table.values().flatten().cloned().collect();
        routes.sort_by_cached_key(|r| {
            (
                r.config.prefix.clone(),
                r.config.host.clone(),
                RouteDisplay(&r.config).to_string(),
            )
        });
        routes
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use sluice_provider_core::metrics::LinkMetrics;
    use sluice_provider_core::{ConfigReader, Failure, Ingest, Message, RunnerSettings};

    use super::*;

    struct Nowhere;

    impl Ingest for Nowhere {
        async fn deliver(&self, _: &[Message]) -> Result<Result<(), Failure>, anyhow::Error> {
            Ok(Ok(()))
        }
    }

    fn add(router: &Router, component: &str, pairs: &[(&str, &str)]) -> Result<Arc<Route>, RouteConflict> {
        let values: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let secrets = HashMap::new();
        let config = RouteConfig::from_config(&ConfigReader::new(&values, &secrets)).unwrap();
        let delivery = Delivery::new(
            LinkKey::new(component, "default"),
            Arc::new(Nowhere),
            RunnerSettings::default(),
            Arc::new(LinkMetrics::default()),
        );
        router.insert(config, delivery)
    }

    fn who(router: &Router, host: Option<&str>, path: &str, method: Method) -> String {
        match router.lookup(host, path, &method) {
            Lookup::Found(r) => r.link().component.clone(),
            Lookup::MethodNotAllowed(m) => format!("405 {m:?}"),
            Lookup::NotFound => "404".into(),
        }
    }

    #[test]
    fn prefixes_longest_first() {
        assert_eq!(prefixes("/a/b/c").collect::<Vec<_>>(), ["/a/b/c", "/a/b", "/a", "/"]);
        assert_eq!(prefixes("/a/b/").collect::<Vec<_>>(), ["/a/b", "/a", "/"]);
        assert_eq!(prefixes("/").collect::<Vec<_>>(), ["/"]);
        assert_eq!(prefixes("//").collect::<Vec<_>>(), ["/"]);
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let r = Router::default();
        add(&r, "root", &[("path", "/"), ("nested_routes", "*")]).unwrap();
        add(&r, "a", &[("path", "/a"), ("nested_routes", "/a/b")]).unwrap();
        add(&r, "ab", &[("path", "/A/B")]).unwrap();
        for _ in 0..3 {
            assert_eq!(who(&r, None, "/a/b/c", Method::POST), "ab");
            assert_eq!(who(&r, None, "/a/b", Method::POST), "ab");
            assert_eq!(who(&r, None, "/a/bc", Method::POST), "a");
            assert_eq!(who(&r, None, "/a", Method::POST), "a");
            assert_eq!(who(&r, None, "/ab", Method::POST), "root");
            assert_eq!(who(&r, None, "/x", Method::POST), "root");
            assert_eq!(who(&r, None, "/A/b/C", Method::POST), "ab");
        }
        assert_eq!(who(&r, None, "*", Method::OPTIONS), "404");
    }

    #[test]
    fn host_routes_before_any_host() {
        let r = Router::default();
        add(&r, "any", &[("path", "/a/b")]).unwrap();
        add(&r, "hosted", &[("path", "/a"), ("host", "In.Example")]).unwrap();
        assert_eq!(who(&r, Some("in.example"), "/a/b", Method::POST), "hosted");
        assert_eq!(who(&r, Some("other.example"), "/a/b", Method::POST), "any");
        assert_eq!(who(&r, Some("in.example"), "/z", Method::POST), "404");
        assert_eq!(who(&r, None, "/a/b", Method::POST), "any");
    }

    #[test]
    fn methods_split_a_prefix() {
        let r = Router::default();
        add(&r, "posts", &[("path", "/a"), ("methods", "POST")]).unwrap();
        add(&r, "puts", &[("path", "/a"), ("methods", "PUT")]).unwrap();
        assert_eq!(who(&r, None, "/a", Method::POST), "posts");
        assert_eq!(who(&r, None, "/a", Method::PUT), "puts");
        assert_eq!(who(&r, None, "/a", Method::GET), "405 [POST, PUT]");
        add(&r, "any", &[("path", "/a"), ("methods", "*")]).unwrap();
        assert_eq!(who(&r, None, "/a", Method::GET), "any");
        assert_eq!(who(&r, None, "/a", Method::POST), "posts");
    }

    #[test]
    fn collisions_name_the_owner_and_leave_it_in_place() {
        let r = Router::default();
        let first = add(&r, "first", &[("path", "/a/")]).unwrap();
        let err = add(&r, "second", &[("path", "/a"), ("methods", "PUT,DELETE")]).unwrap_err();
        assert_eq!(err.owner(), &LinkKey::new("first", "default"));
        assert_eq!(
            err.to_string(),
            "route DELETE,PUT /a (any host) collides with the route POST,PUT /a (any host) of link `default` of component `first`"
        );
        assert!(add(&r, "any", &[("path", "/a"), ("methods", "*")]).is_ok());
        assert!(add(&r, "any2", &[("path", "/a"), ("methods", "*")]).is_err());
        assert!(add(&r, "hosted", &[("path", "/a"), ("host", "h")]).is_ok());
        assert_eq!(who(&r, None, "/a", Method::POST), "first");
        r.remove(&first);
        assert_eq!(who(&r, None, "/a", Method::POST), "any");
        assert!(add(&r, "second", &[("path", "/a"), ("methods", "PUT,DELETE")]).is_ok());
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn nesting_needs_the_outer_routes_declaration_in_either_order() {
        let r = Router::default();
        add(&r, "a", &[("path", "/a")]).unwrap();
        let err = add(&r, "ab", &[("path", "/a/b")]).unwrap_err();
        assert_eq!(err.owner(), &LinkKey::new("a", "default"));
        assert_eq!(
            err.to_string(),
            "route POST,PUT /a/b (any host) lies under the route POST,PUT /a (any host) of link `default` of component `a`, whose `nested_routes` does not list `/a/b`"
        );
        // A catch-all added later would take nothing from `/a`, but it must still declare it, so
        // that the outcome does not depend on which link came first.
        let err = add(&r, "root", &[("path", "/")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "route POST,PUT / (any host) encloses the route POST,PUT /a (any host) of link `default` of component `a`; list `/a` (or `*`) in its `nested_routes` to allow that"
        );
        add(&r, "root", &[("path", "/"), ("nested_routes", "/a")]).unwrap();
        // Another host's routes are another scope.
        add(&r, "hosted", &[("path", "/a/b"), ("host", "h.example")]).unwrap();
        assert_eq!(who(&r, None, "/a/b", Method::POST), "a");
        assert_eq!(who(&r, Some("h.example"), "/a/b", Method::POST), "hosted");
        // Declared: the whole declared subtree may be served by other links.
        let r = Router::default();
        add(&r, "deep", &[("path", "/o/deep/er")]).unwrap();
        add(&r, "o", &[("path", "/o"), ("nested_routes", "/o/deep")]).unwrap();
        assert!(add(&r, "x", &[("path", "/o/x")]).is_err());
        assert_eq!(who(&r, None, "/o/deep/er/1", Method::POST), "deep");
        assert_eq!(who(&r, None, "/o/deep/1", Method::POST), "o");
    }

    #[test]
    fn a_link_put_again_is_checked_against_every_route_but_its_own() {
        let r = Router::default();
        add(&r, "a", &[("path", "/a")]).unwrap();
        add(&r, "b", &[("path", "/b")]).unwrap();
        let config = |path: &str| {
            let values = HashMap::from([("path".to_string(), path.to_string())]);
            RouteConfig::from_config(&ConfigReader::new(&values, &HashMap::new())).unwrap()
        };
        let a = LinkKey::new("a", "default");
        assert!(r.check(&config("/a"), &a).is_ok(), "its own route is no conflict");
        assert!(r.check(&config("/c"), &a).is_ok());
        let err = r.check(&config("/b"), &a).unwrap_err().to_string();
        assert!(err.contains('b'), "{err}");
        assert!(r.check(&config("/b/x"), &a).is_err(), "nested undeclared under b");
        assert_eq!(who(&r, None, "/a", Method::POST), "a", "checking changes nothing");
    }
}
