//! Which topic a sink record is produced to.
//!
//! The link decides, never the pipeline's logic: records go to the link's `topic`. Only a link
//! that opts in with `topic_from_header = true` lets a record's `kafka.topic` header choose, and
//! then only among the topics the link allows (`allowed_topics`, `topic_prefix`); a record naming
//! any other topic is rejected. Without the opt-in, `kafka.topic` is an ordinary header.

use bytes::Bytes;
use sluice_provider_core::schema::{Key, KeyType};
use sluice_provider_core::{ConfigError, ConfigReader};

/// The record header that names a topic on links with `topic_from_header = true`.
pub const TOPIC_HEADER: &str = "kafka.topic";

/// Longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// A sink link's topic choice: its `topic`, and what a `kafka.topic` header may pick if allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPolicy {
    /// `topic`: where records without a (permitted) header go.
    default: Option<String>,
    /// `Some` when `topic_from_header = true`: the topics a header may name.
    from_header: Option<AllowedTopics>,
}

/// The topics a `kafka.topic` header may name: one of `names`, or any topic under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedTopics {
    names: Vec<String>,
    prefix: Option<String>,
}

impl AllowedTopics {
    fn allows(&self, topic: &str) -> bool {
        self.names.iter().any(|n| n == topic)
            || self
                .prefix
                .as_deref()
                .is_some_and(|p| topic.len() > p.len() && topic.starts_with(p))
    }
}

/// The keys of [`TopicPolicy`], on sink links.
pub const KEYS: &[Key] = &[
    Key::new(
        "topic",
        KeyType::String,
        "Topic to produce to; required unless `topic_from_header` is on",
    )
    .sink(),
    Key::new(
        "topic_from_header",
        KeyType::Bool,
        "Let a record's `kafka.topic` header choose its topic",
    )
    .sink()
    .default("false"),
    Key::new(
        "allowed_topics",
        KeyType::List,
        "With `topic_from_header`: topics a header may name",
    )
    .sink(),
    Key::new(
        "topic_prefix",
        KeyType::String,
        "With `topic_from_header`: a header may name any topic with this prefix",
    )
    .sink(),
];

/// Where one record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The topic to produce to.
    pub topic: &'a str,
    /// The record's `kafka.topic` header chose the topic; it is not produced with the record.
    pub by_header: bool,
}

impl TopicPolicy {
    /// Parses `topic`, `topic_from_header`, `allowed_topics` and `topic_prefix`.
    pub fn parse(config: &ConfigReader<'_>) -> Result<Self, ConfigError> {
        let default = config.str("topic").filter(|t| !t.is_empty()).map(str::to_string);
        if let Some(topic) = &default {
            check_name("topic", topic)?;
        }
        let from_header = config.bool_or("topic_from_header", false)?;
        let names: Vec<String> = config
            .str("allowed_topics")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        for name in &names {
            check_name("allowed_topics", name)?;
        }
        let prefix = config.str("topic_prefix").filter(|p| !p.is_empty()).map(str::to_string);
        if let Some(prefix) = &prefix {
            check_name("topic_prefix", prefix)?;
        }
        if !from_header {
            if let Some(key) = [
                ("allowed_topics", !names.is_empty()),
                ("topic_prefix", prefix.is_some()),
            ]
            .into_iter()
            .find_map(|(key, set)| set.then_some(key))
            {
                return Err(ConfigError::invalid(
                    key,
                    "only used with `topic_from_header = true`; without it every record goes to `topic`",
                ));
            }
            return match default {
                Some(_) => Ok(Self {
                    default,
                    from_header: None,
                }),
                None => Err(ConfigError::Missing { key: "topic".into() }),
            };
        }
        if names.is_empty() && prefix.is_none() {
            return Err(ConfigError::invalid(
                "topic_from_header",
                "needs `allowed_topics` or `topic_prefix`: the topics a record's `kafka.topic` header may name",
            ));
        }
        Ok(Self {
            default,
            from_header: Some(AllowedTopics { names, prefix }),
        })
    }

    /// Topics that must exist when the link is put: `topic` and every name in `allowed_topics`.
    #[must_use]
    pub fn named_topics(&self) -> Vec<String> {
        let allowed = self.from_header.iter().flat_map(|a| a.names.iter());
        let mut topics: Vec<String> = self.default.iter().chain(allowed).cloned().collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// The topic for a record with `headers`, or why it has none it may use.
    pub fn route<'a>(&'a self, headers: &'a [(String, Bytes)]) -> Result<Route<'a>, String> {
        let header = self
            .from_header
            .as_ref()
            .and_then(|allowed| Some((allowed, headers.iter().find(|(k, _)| k == TOPIC_HEADER)?)));
        match header {
            Some((allowed, (_, value))) => {
                let topic =
                    std::str::from_utf8(value).map_err(|_| format!("the `{TOPIC_HEADER}` header is not UTF-8"))?;
                if !allowed.allows(topic) {
                    return Err(format!(
                        "the `{TOPIC_HEADER}` header names topic `{}`, which this link does not allow \
                         (see its `allowed_topics` and `topic_prefix`)",
                        topic.escape_debug()
                    ));
                }
                check_name(TOPIC_HEADER, topic).map_err(|e| e.to_string())?;
                Ok(Route { topic, by_header: true })
            }
            None => match &self.default {
                Some(topic) => Ok(Route {
                    topic,
                    by_header: false,
                }),
                None => Err(format!(
                    "the record has no `{TOPIC_HEADER}` header and the link sets no `topic`"
                )),
            },
        }
    }
}

/// A Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.len() > MAX_TOPIC_LEN || !name.chars().all(legal) || name == "." || name == ".." {
        return Err(ConfigError::invalid(
            key,
            format!(
                "`{}` is not a Kafka topic name (1 to {MAX_TOPIC_LEN} of a-z, A-Z, 0-9, `.`, `_`, `-`)",
                name.escape_debug()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<TopicPolicy, ConfigError> {
        let values: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TopicPolicy::parse(&ConfigReader::new(&values, &HashMap::new()))
    }

    fn header(topic: &str) -> Vec<(String, Bytes)> {
        vec![(TOPIC_HEADER.to_string(), Bytes::from(topic.to_string()))]
    }

    #[test]
    fn by_default_the_header_chooses_nothing() {
        let p = parse(&[("topic", "orders")]).unwrap();
        let headers = header("payments");
        let route = p.route(&headers).unwrap();
        assert_eq!(
            route,
            Route {
                topic: "orders",
                by_header: false
            }
        );
        assert_eq!(p.named_topics(), ["orders"]);
    }

    #[test]
    fn without_the_opt_in_a_topic_is_required_and_allow_lists_are_refused() {
        assert_eq!(parse(&[]).unwrap_err().key(), "topic");
        assert_eq!(
            parse(&[("topic", "a"), ("allowed_topics", "b")]).unwrap_err().key(),
            "allowed_topics"
        );
        assert_eq!(
            parse(&[("topic", "a"), ("topic_prefix", "t.")]).unwrap_err().key(),
            "topic_prefix"
        );
    }

    #[test]
    fn the_opt_in_needs_an_allow_list_or_a_prefix() {
        let e = parse(&[("topic", "a"), ("topic_from_header", "true")]).unwrap_err();
        assert_eq!(e.key(), "topic_from_header");
        assert_eq!(
            parse(&[("topic_from_header", "maybe"), ("topic", "a")])
                .unwrap_err()
                .key(),
            "topic_from_header"
        );
    }

    #[test]
    fn an_allowed_header_topic_is_used_and_others_are_refused() {
        let p = parse(&[
            ("topic", "orders"),
            ("topic_from_header", "true"),
            ("allowed_topics", "eu.orders, us.orders"),
            ("topic_prefix", "tenant-a."),
        ])
        .unwrap();
        assert_eq!(p.named_topics(), ["eu.orders", "orders", "us.orders"]);
        for allowed in ["eu.orders", "us.orders", "tenant-a.x"] {
            assert_eq!(
                p.route(&header(allowed)).unwrap(),
                Route {
                    topic: allowed,
                    by_header: true
                }
            );
        }
        for refused in [
            "payments",
            "tenant-a.",
            "tenant-b.x",
            "eu.orders2",
            "tenant-a.x/y",
            "tenant-a.\0",
        ] {
            let reason = p.route(&header(refused)).unwrap_err();
            assert!(reason.contains(TOPIC_HEADER), "{refused}: {reason}");
        }
        let not_utf8 = vec![(TOPIC_HEADER.to_string(), Bytes::from_static(b"\xff"))];
        assert!(p.route(&not_utf8).unwrap_err().contains("UTF-8"));
        assert_eq!(p.route(&[]).unwrap().topic, "orders");
    }

    #[test]
    fn with_the_opt_in_and_no_topic_a_record_without_header_is_refused() {
        let p = parse(&[("topic_from_header", "on"), ("topic_prefix", "t.")]).unwrap();
        assert!(p.route(&[]).unwrap_err().contains("no `kafka.topic` header"));
        assert!(p.named_topics().is_empty());
    }

    #[test]
    fn names_are_kafka_topic_names() {
        for (key, value) in [("topic", "a b"), ("allowed_topics", "ok,no/pe"), ("topic_prefix", "..")] {
            let mut pairs = vec![("topic_from_header", "true"), ("topic_prefix", "p.")];
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            assert_eq!(parse(&pairs).unwrap_err().key(), key, "{key}={value}");
        }
    }
}
