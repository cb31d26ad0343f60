//! Finds the line of a key path (`upstreams.api.backends[1].weight`) in a config file's text, so that a
//! problem found after reading (a check across fields) is reported at its line like a syntax error is.
//!
//! The text is read a second time with a deserializer that walks the document along the path and fails
//! once it reaches the value: the YAML reader puts the position of that value on the error, whatever style
//! (block or flow) the file uses.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The 1-based line of the value at `path` in `text`, when the path leads to one.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let steps = parse_path(path)?;
    if steps.is_empty() {
        return None;
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match (Walk { steps: &steps }).deserialize(deserializer) {
        Err(error) if error.to_string().contains(FOUND) => error.location().map(|l| l.line()),
        _ => None,
    }
}

/// `a.b[2].c` as steps; `None` when it is no key path.
fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut indexes) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(Step::Key(key.to_owned()));
        }
        while let Some(rest) = indexes.strip_prefix('[') {
            let end = rest.find(']')?;
            steps.push(Step::Index(rest[..end].parse().ok()?));
            indexes = &rest[end + 1..];
        }
        if !indexes.is_empty() {
            return None;
        }
    }
    Some(steps)
}

const FOUND: &str = "found the key";

/// Walks to the value at `steps` and fails there; succeeds (finding nothing) when the path leads nowhere.
struct Walk<'a> {
    steps: &'a [Step],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.steps.split_first() {
            None => deserializer.deserialize_any(Here),
            Some(_) => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(wanted), rest)) = self.steps.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            if key.as_str() == Some(wanted.as_str()) {
                return map.next_value_seed(Walk { steps: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(wanted), rest)) = self.steps.split_first() else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        for _ in 0..*wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Walk { steps: rest })?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The value at the end of the path: fails, so that the error carries its position.
struct Here;

impl<'de> Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "server:\n  address: \":443\"\n\nupstreams:\n  api:\n    backends:\n      - name: a\n        url: \"http://127.0.0.1:1\"\n      - {name: b, url: \"http://127.0.0.1:2\", weight: 0}\n    load_balancer:\n      retry_budget:\n        ratio: 3\n";

    #[test]
    fn finds_keys_in_block_and_flow_style() {
        assert_eq!(line_of(TEXT, "server.address"), Some(2));
        assert_eq!(line_of(TEXT, "upstreams.api.backends[0].url"), Some(8));
        assert_eq!(line_of(TEXT, "upstreams.api.backends[1].weight"), Some(9));
        assert_eq!(
            line_of(TEXT, "upstreams.api.load_balancer.retry_budget.ratio"),
            Some(12)
        );
        assert_eq!(line_of(TEXT, "upstreams.api.backends"), Some(7));
    }

    #[test]
    fn a_path_that_leads_nowhere_has_no_line() {
        assert_eq!(line_of(TEXT, "server.tls"), None);
        assert_eq!(line_of(TEXT, "upstreams.api.backends[5].url"), None);
        assert_eq!(line_of(TEXT, "server.address.port"), None);
        assert_eq!(line_of(TEXT, ""), None);
        assert_eq!(line_of(TEXT, "a[x]"), None);
        assert_eq!(line_of("- just\n- a list\n", "server"), None);
    }
}
