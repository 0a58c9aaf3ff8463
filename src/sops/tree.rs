//! A SOPS document as sops reads it: an ordered tree of string keys and typed scalars (the MAC
//! covers values in file order, which `serde_json::Value` does not keep).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One YAML node, in the order it was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in file order; a key that is not a string is kept as `Err` with what it was, for
    /// the error (sops refuses such trees).
    Map(Vec<(Key, Node)>),
}

/// A mapping key: sops supports string keys only.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Str(String),
    Other(String),
}

impl Key {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Key::Str(key) => Some(key),
            Key::Other(_) => None,
        }
    }
}

impl Node {
    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(text) => Some(text),
            _ => None,
        }
    }

    /// The JSON value the rest of gitopsd works on; `None` for a float JSON cannot hold
    /// (NaN, infinity).
    pub fn to_json(&self) -> Option<Value> {
        Some(match self {
            Node::Null => Value::Null,
            Node::Bool(value) => Value::Bool(*value),
            Node::Int(value) => Value::from(*value),
            Node::UInt(value) => Value::from(*value),
            Node::Float(value) => Value::Number(serde_json::Number::from_f64(*value)?),
            Node::Str(text) => Value::String(text.clone()),
            Node::Seq(items) => Value::Array(
                items
                    .iter()
                    .map(Node::to_json)
                    .collect::<Option<Vec<_>>>()?,
            ),
            Node::Map(items) => {
                let mut map = serde_json::Map::new();
                for (key, value) in items {
                    let key = match key {
                        Key::Str(key) | Key::Other(key) => key.clone(),
                    };
                    map.insert(key, value.to_json()?);
                }
                Value::Object(map)
            }
        })
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Node, E> {
        Ok(Node::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Node, E> {
        Ok(Node::Int(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Node, E> {
        Ok(i64::try_from(value).map_or(Node::UInt(value), Node::Int))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Node, E> {
        Ok(Node::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Node, E> {
        Ok(Node::Str(value.to_string()))
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

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some((key, value)) = map.next_entry::<Node, Node>()? {
            let key = match key {
                Node::Str(key) => Key::Str(key),
                other => Key::Other(
                    other
                        .to_json()
                        .map_or_else(|| "a float".to_string(), |v| v.to_string()),
                ),
            };
            items.push((key, value));
        }
        Ok(Node::Map(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Node {
        serde_saphyr::from_str(text).expect("valid YAML")
    }

    #[test]
    fn keys_keep_their_order_and_scalars_their_type() {
        let node = parse("z: 1\na: \"1\"\nm: [true, 1.5, ~, -3]\nbig: 18446744073709551615\n");
        let Node::Map(items) = &node else {
            panic!("a mapping")
        };
        let keys: Vec<&str> = items.iter().filter_map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "m", "big"]);
        assert_eq!(node.get("z"), Some(&Node::Int(1)));
        assert_eq!(node.get("a"), Some(&Node::Str("1".into())));
        assert_eq!(
            node.get("m"),
            Some(&Node::Seq(vec![
                Node::Bool(true),
                Node::Float(1.5),
                Node::Null,
                Node::Int(-3)
            ]))
        );
        assert_eq!(node.get("big"), Some(&Node::UInt(u64::MAX)));
        assert_eq!(
            node.to_json(),
            Some(
                serde_json::json!({"z": 1, "a": "1", "m": [true, 1.5, null, -3], "big": u64::MAX})
            )
        );
    }

    #[test]
    fn a_non_string_key_is_kept_apart() {
        let node = parse("1: a\n");
        let Node::Map(items) = node else {
            panic!("a mapping")
        };
        assert_eq!(items[0].0, Key::Other("1".into()));
    }
}
