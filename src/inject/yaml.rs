//! A YAML document as plain data, its mappings in the order they were written, so
//! `gatehouse inject` changes what it adds and nothing else: keys keep their order,
//! quoted scalars stay strings (`"8080"`, `"true"`), and running it again on its own
//! output changes nothing.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A YAML node.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are strings, as Kubernetes writes them.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// A mapping from `(key, value)` pairs.
    pub fn map<const N: usize>(entries: [(&str, Node); N]) -> Node {
        Node::Map(
            entries
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        )
    }

    pub fn str(text: impl Into<String>) -> Node {
        Node::Str(text.into())
    }

    /// The value at `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at `key`, added at the end (as `empty`) when the mapping lacks it or
    /// holds `null` there; `None` when this is not a mapping.
    pub fn entry(&mut self, key: &str, empty: Node) -> Option<&mut Node> {
        self.entry_before(key, None, empty)
    }

    /// [`Node::entry`], but a new key goes just before `before` when the mapping has it,
    /// so what is added reads where a person would have written it.
    pub fn entry_before(
        &mut self,
        key: &str,
        before: Option<&str>,
        empty: Node,
    ) -> Option<&mut Node> {
        let Node::Map(entries) = self else {
            return None;
        };
        let at = match entries.iter().position(|(k, _)| k == key) {
            Some(at) => {
                if entries[at].1 == Node::Null {
                    entries[at].1 = empty;
                }
                at
            }
            None => {
                let at = before
                    .and_then(|before| entries.iter().position(|(k, _)| k == before))
                    .unwrap_or(entries.len());
                entries.insert(at, (key.to_owned(), empty));
                at
            }
        };
        Some(&mut entries[at].1)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_seq_mut(&mut self) -> Option<&mut Vec<Node>> {
        match self {
            Node::Seq(items) => Some(items),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Node, E> {
        Ok(Node::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Node, E> {
        Ok(Node::Int(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Node, E> {
        Ok(Node::Uint(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Node, E> {
        Ok(Node::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Node, E> {
        Ok(Node::Str(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Node, E> {
        Ok(Node::Str(value))
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let key = match key {
                Node::Str(text) => text,
                Node::Bool(value) => value.to_string(),
                Node::Int(value) => value.to_string(),
                Node::Uint(value) => value.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "a mapping key must be a string, not {other:?}"
                    )));
                }
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => serializer.serialize_unit(),
            Node::Bool(value) => serializer.serialize_bool(*value),
            Node::Int(value) => serializer.serialize_i64(*value),
            Node::Uint(value) => serializer.serialize_u64(*value),
            Node::Float(value) => serializer.serialize_f64(*value),
            Node::Str(text) => serializer.serialize_str(text),
            Node::Seq(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_keeping_order_and_quoted_scalars() {
        let text = "zeta: 1\nalpha: \"true\"\nport: \"8080\"\nreplicas: 2\nflag: false\n\
                    ratio: 1.5\nnone: null\nscript: |\n  line one\n  line two\nlist:\n- y\n- 'n'\n";
        let node: Node = serde_saphyr::from_str(text).unwrap();
        let Node::Map(entries) = &node else {
            panic!("a mapping")
        };
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "zeta", "alpha", "port", "replicas", "flag", "ratio", "none", "script", "list"
            ]
        );
        assert_eq!(node.get("alpha"), Some(&Node::str("true")));
        assert_eq!(node.get("port"), Some(&Node::str("8080")));
        let written = serde_saphyr::to_string(&node).unwrap();
        let again: Node = serde_saphyr::from_str(&written).unwrap();
        assert_eq!(again, node, "{written}");
        assert_eq!(serde_saphyr::to_string(&again).unwrap(), written);
    }

    #[test]
    fn refuses_duplicate_keys() {
        let error = serde_saphyr::from_str::<Node>("a: 1\na: 2\n").unwrap_err();
        assert!(error.to_string().contains("duplicate"), "{error}");
    }
}
