//! The sink's publish topic: a fixed topic or a template with `{key}` and `{header:NAME}`.
//!
//! The link's template fixes the topic's levels; a record only fills in values. A value that
//! would add a level (`/`), make a wildcard (`+`, `#`), is empty or holds NUL is refused, so the
//! record is rejected by index with a reason naming the key or header, and nothing is published
//! for it.

use sluice_provider_core::ConfigError;

/// A publish topic: literal parts and `{key}` / `{header:NAME}` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Key,
    Header(String),
}

/// Characters a filled-in value may not hold: the level separator, the wildcards and NUL.
const FORBIDDEN: [char; 4] = ['/', '+', '#', '\0'];

impl TopicTemplate {
    /// Parses `plant/{header:site}/{key}` (the `topic` key).
    pub fn parse(template: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::invalid("topic", reason);
        if template.contains(['#', '+']) {
            return Err(bad(format!("`{template}` has a wildcard; a publish topic cannot")));
        }
        if template.contains('\0') {
            return Err(bad("the topic holds a NUL character".into()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| bad(format!("unclosed `{{` in `{template}`")))?;
            let field = &rest[start + 1..start + end];
            parts.push(match field {
                "key" => Part::Key,
                f => match f.strip_prefix("header:") {
                    Some(name) if !name.is_empty() => Part::Header(name.to_string()),
                    _ => return Err(bad(format!("unknown field `{{{f}}}`: use {{key}} or {{header:NAME}}"))),
                },
            });
            rest = &rest[start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if parts.is_empty() {
            return Err(ConfigError::Missing { key: "topic".into() });
        }
        Ok(Self(parts))
    }

    /// The topic for one record, or why it has none.
    pub fn render(&self, key: Option<&[u8]>, headers: &[(String, bytes::Bytes)]) -> Result<String, String> {
        let mut topic = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(s) => topic.push_str(s),
                Part::Key => {
                    let key = key.ok_or("the topic uses {key} but the record has no key")?;
                    topic.push_str(level_value("the record key", key)?);
                }
                Part::Header(name) => {
                    let (_, value) = headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .ok_or_else(|| format!("the topic uses {{header:{name}}} but the record has no such header"))?;
                    topic.push_str(level_value(&format!("header `{name}`"), value)?);
                }
            }
        }
        Ok(topic)
    }
}

/// `value` as text that fills part of one topic level, or why it cannot (`what` names its source).
fn level_value<'a>(what: &str, value: &'a [u8]) -> Result<&'a str, String> {
    let text = std::str::from_utf8(value).map_err(|_| format!("{what} is not UTF-8"))?;
    if text.is_empty() {
        return Err(format!("{what} is empty and would leave an empty topic level"));
    }
    if let Some(c) = text.chars().find(|c| FORBIDDEN.contains(c)) {
        return Err(format!(
            "{what} `{}` holds `{}`, which would change the topic's levels or make a wildcard",
            text.escape_debug(),
            c.escape_debug()
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn templates_fill_in_key_and_headers() {
        let t = TopicTemplate::parse("plant/{header:site}/{key}").unwrap();
        let headers = vec![("site".to_string(), Bytes::from_static(b"north"))];
        assert_eq!(t.render(Some(b"m1"), &headers).unwrap(), "plant/north/m1");
        assert!(t.render(None, &headers).unwrap_err().contains("{key}"));
        assert!(t.render(Some(b"m1"), &[]).unwrap_err().contains("site"));
        assert_eq!(
            TopicTemplate::parse("fixed").unwrap().render(None, &[]).unwrap(),
            "fixed"
        );
        for bad in ["a/#", "a/+/b", "{nope}", "{header:}", "open{key", "a\0b"] {
            assert_eq!(TopicTemplate::parse(bad).unwrap_err().key(), "topic", "{bad:?}");
        }
    }

    #[test]
    fn values_never_add_levels_or_wildcards() {
        let t = TopicTemplate::parse("plant/{header:site}/{key}").unwrap();
        let site = |v: &'static [u8]| vec![("site".to_string(), Bytes::from_static(v))];
        for key in [&b"a/b"[..], b"+", b"#", b"m/#", b"x\0y", b"/", b""] {
            let reason = t.render(Some(key), &site(b"north")).unwrap_err();
            assert!(reason.contains("the record key"), "{key:?}: {reason}");
        }
        for value in [&b"n/s"[..], b"+", b"#", b"\0", b""] {
            let reason = t.render(Some(b"m1"), &site(value)).unwrap_err();
            assert!(reason.contains("header `site`"), "{value:?}: {reason}");
        }
        let reason = t.render(Some(b"\xff"), &site(b"north")).unwrap_err();
        assert!(reason.contains("not UTF-8"), "{reason}");
        // Other characters, `$` and spaces included, stay inside their level.
        assert_eq!(
            t.render(Some(b"m 1.$x"), &site(b"north-7")).unwrap(),
            "plant/north-7/m 1.$x"
        );
    }
}
