//! Reading an INFO reply: one parser for everything keyway reads of its
//! backends' INFO (the health probe, the version at start, a replica's
//! link, INFO merged over servers).

use std::borrow::Cow;

use super::shapes;

/// The text of an INFO reply (a bulk or verbatim string), or `None` for
/// anything else (an error).
pub fn text(reply: &[u8]) -> Option<Cow<'_, str>> {
    shapes::bulk(reply).map(String::from_utf8_lossy)
}

/// Each `field:value` line with its section (lowercase, as in `# Memory`
/// → `memory`), values trimmed; section headers and blank lines skipped.
pub fn fields(text: &str) -> impl Iterator<Item = Field<'_>> {
    let mut section = "";
    text.lines().filter_map(move |line| {
        if let Some(name) = line.strip_prefix("# ") {
            section = name.trim();
            return None;
        }
        let (name, value) = line.split_once(':')?;
        Some(Field {
            section,
            name,
            value: value.trim_end(),
        })
    })
}

/// The value of one field, wherever it is.
pub fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    fields(text)
        .find(|f| f.name == name)
        .map(|f| f.value.trim())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// As the header writes it (`Memory`); compare case-insensitively.
    pub section: &'a str,
    pub name: &'a str,
    pub value: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_carry_their_section() {
        let text = "# Server\r\nredis_version:7.0.15\r\n\r\n# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n";
        let all: Vec<Field> = fields(text).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[1],
            Field {
                section: "Keyspace",
                name: "db0",
                value: "keys=1,expires=0,avg_ttl=0"
            }
        );
        assert_eq!(field(text, "redis_version"), Some("7.0.15"));
        assert_eq!(field(text, "missing"), None);
        assert!(super::text(b"-ERR no\r\n").is_none());
        assert_eq!(super::text(b"$3\r\na:b\r\n").as_deref(), Some("a:b"));
    }
}
