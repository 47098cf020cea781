//! Stream command replies, read from fred's untyped [`Value`] in both RESP2
//! and RESP3 shapes. (The original design decoded `XREADGROUP` into a typed
//! map that did not match what the server sends, and never read an entry.)

use fred::types::Value;

/// A reply that is not shaped as the command documents.
#[derive(Debug, thiserror::Error)]
#[error("unexpected {command} reply: {what}")]
pub struct ShapeError {
    pub command: &'static str,
    pub what: String,
}

fn shape(command: &'static str, what: impl Into<String>) -> ShapeError {
    ShapeError { command, what: what.into() }
}

/// One stream entry as delivered to this consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// The `payload` field's bytes.
    Payload(Vec<u8>),
    /// The entry has fields, but none is `payload`; the fields as a JSON
    /// object (for the dead letter).
    NoPayload(String),
    /// The entry was trimmed or deleted while pending: Redis still lists its
    /// id but has no fields any more (a nil body).
    Trimmed,
}

/// The entries of an `XREADGROUP … STREAMS key id` reply for `key`: nil (a
/// timed-out block) is no entries; RESP2 is `[[key, [entry…]]…]`, RESP3 is
/// `{key: [entry…]}`.
pub fn read_reply(value: Value, key: &str) -> Result<Vec<Entry>, ShapeError> {
    const CMD: &str = "XREADGROUP";
    let streams: Vec<(String, Value)> = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Map(map) => {
            map.inner().into_iter().map(|(k, v)| (String::from_utf8_lossy(k.as_bytes()).into_owned(), v)).collect()
        }
        Value::Array(streams) => {
            let mut out = Vec::with_capacity(streams.len());
            for stream in streams {
                let Value::Array(pair) = stream else { return Err(shape(CMD, "a stream is not an array")) };
                let [name, entries]: [Value; 2] =
                    pair.try_into().map_err(|_| shape(CMD, "a stream is not [key, entries]"))?;
                out.push((text(&name).ok_or_else(|| shape(CMD, "stream key is not a string"))?, entries));
            }
            out
        }
        other => return Err(shape(CMD, format!("{:?} instead of streams", other.kind()))),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        if name == key {
            out.extend(entry_list(entries, CMD)?);
        }
    }
    Ok(out)
}

/// An `XAUTOCLAIM` reply: `[next cursor, [entry…], [deleted id…]]` (the
/// third element since Redis 7). Entries deleted while pending were dropped
/// from the group's pending list by the claim itself; their ids come back
/// so they can be counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    pub cursor: String,
    pub entries: Vec<Entry>,
    pub deleted: Vec<String>,
}

pub fn autoclaim_reply(value: Value) -> Result<Claimed, ShapeError> {
    const CMD: &str = "XAUTOCLAIM";
    let Value::Array(parts) = value else { return Err(shape(CMD, "not an array")) };
    let mut parts = parts.into_iter();
    let cursor = parts.next().as_ref().and_then(text).ok_or_else(|| shape(CMD, "no cursor"))?;
    let entries = entry_list(parts.next().unwrap_or(Value::Array(Vec::new())), CMD)?;
    let deleted = match parts.next() {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|v| text(v).ok_or_else(|| shape(CMD, "deleted id is not a string")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(shape(CMD, "deleted ids are not an array")),
    };
    Ok(Claimed { cursor, entries, deleted })
}

/// The `(id, delivery count)` pairs of an extended `XPENDING key group
/// start end count [consumer]` reply: `[[id, consumer, idle ms, count]…]`.
pub fn pending_reply(value: Value) -> Result<Vec<(String, u64)>, ShapeError> {
    const CMD: &str = "XPENDING";
    let rows = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(rows) => rows,
        _ => return Err(shape(CMD, "not an array")),
    };
    rows.into_iter()
        .map(|row| {
            let Value::Array(fields) = row else { return Err(shape(CMD, "a row is not an array")) };
            let id = fields.first().and_then(text).ok_or_else(|| shape(CMD, "a row has no id"))?;
            let count = fields.get(3).and_then(integer).ok_or_else(|| shape(CMD, "a row has no delivery count"))?;
            Ok((id, count))
        })
        .collect()
}

/// `pending` and `lag` of `group` from an `XINFO GROUPS key` reply (a list
/// of flat key/value arrays in RESP2, of maps in RESP3). `lag` is absent
/// before Redis 7 and nil when Redis cannot tell.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupInfo {
    pub pending: u64,
    pub lag: Option<u64>,
}

pub fn group_info_reply(value: Value, group: &str) -> Result<Option<GroupInfo>, ShapeError> {
    const CMD: &str = "XINFO GROUPS";
    let Value::Array(groups) = value else { return Err(shape(CMD, "not an array")) };
    for g in groups {
        let pairs: Vec<(String, Value)> = match g {
            Value::Map(map) => {
                map.inner().into_iter().map(|(k, v)| (String::from_utf8_lossy(k.as_bytes()).into_owned(), v)).collect()
            }
            Value::Array(flat) => {
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((text(&k).unwrap_or_default(), v));
                }
                pairs
            }
            _ => return Err(shape(CMD, "a group is neither a map nor an array")),
        };
        let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if field("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        let pending = field("pending").and_then(integer).ok_or_else(|| shape(CMD, "no pending count"))?;
        return Ok(Some(GroupInfo { pending, lag: field("lag").and_then(integer) }));
    }
    Ok(None)
}

/// `[[id, [field, value…] | nil]…]`.
fn entry_list(value: Value, command: &'static str) -> Result<Vec<Entry>, ShapeError> {
    let entries = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(entries) => entries,
        _ => return Err(shape(command, "entries are not an array")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let parts = match entry {
            // Redis 6.2's XAUTOCLAIM reported a deleted entry as nil.
            Value::Null => continue,
            Value::Array(parts) => parts,
            _ => return Err(shape(command, "an entry is not an array")),
        };
        let mut parts = parts.into_iter();
        let id = parts.next().as_ref().and_then(text).ok_or_else(|| shape(command, "an entry has no id"))?;
        let body = match parts.next() {
            None | Some(Value::Null) => Body::Trimmed,
            Some(Value::Array(fields)) => body(fields.chunks_exact(2).map(|kv| (&kv[0], &kv[1]))),
            Some(Value::Map(map)) => {
                let fields: Vec<(Value, Value)> =
                    map.inner().into_iter().map(|(k, v)| (Value::Bytes(k.as_bytes().to_vec().into()), v)).collect();
                body(fields.iter().map(|(k, v)| (k, v)))
            }
            Some(_) => return Err(shape(command, format!("entry {id} has fields of an unknown shape"))),
        };
        out.push(Entry { id, body });
    }
    Ok(out)
}

fn body<'a>(fields: impl Iterator<Item = (&'a Value, &'a Value)>) -> Body {
    let mut seen = serde_json::Map::new();
    for (k, v) in fields {
        let key = k.as_bytes().map(String::from_utf8_lossy).unwrap_or_default();
        if key == "payload"
            && let Some(bytes) = v.as_bytes()
        {
            return Body::Payload(bytes.to_vec());
        }
        let value = v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_else(|| format!("{v:?}"));
        seen.insert(key.into_owned(), value.into());
    }
    Body::NoPayload(serde_json::Value::Object(seen).to_string())
}

fn text(v: &Value) -> Option<String> {
    v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn integer(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(*i).ok(),
        other => other.as_bytes().and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use fred::types::{Key, Map};

    use super::*;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    fn arr(items: Vec<Value>) -> Value {
        Value::Array(items)
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        arr(vec![s(id), arr(fields.iter().flat_map(|(k, v)| [s(k), s(v)]).collect())])
    }

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        let pairs: Vec<(Key, Value)> = pairs.into_iter().map(|(k, v)| (Key::from(k), v)).collect();
        Value::Map(Map::try_from(pairs).unwrap())
    }

    fn payload(id: &str, p: &str) -> Entry {
        Entry { id: id.into(), body: Body::Payload(p.as_bytes().to_vec()) }
    }

    #[test]
    fn xreadgroup_resp2_and_resp3_read_alike() {
        let entries = || {
            arr(vec![
                entry("1-0", &[("payload", "{}")]),
                entry("1-1", &[("other", "x"), ("payload", "[1]")]),
                arr(vec![s("2-0"), Value::Null]),
                entry("3-0", &[("data", "y")]),
            ])
        };
        let expected = vec![
            payload("1-0", "{}"),
            payload("1-1", "[1]"),
            Entry { id: "2-0".into(), body: Body::Trimmed },
            Entry { id: "3-0".into(), body: Body::NoPayload(r#"{"data":"y"}"#.into()) },
        ];
        let resp2 = arr(vec![arr(vec![s("k"), entries()])]);
        assert_eq!(read_reply(resp2, "k").unwrap(), expected);
        let resp3 = map(vec![("k", entries())]);
        assert_eq!(read_reply(resp3, "k").unwrap(), expected);
        assert_eq!(read_reply(Value::Null, "k").unwrap(), []);
        assert_eq!(read_reply(arr(vec![arr(vec![s("k"), arr(vec![])])]), "k").unwrap(), []);
    }

    #[test]
    fn bytes_payloads_and_resp3_field_maps() {
        let e = arr(vec![
            Value::Bytes(b"5-1".to_vec().into()),
            map(vec![("payload", Value::Bytes(vec![0xff, b'{'].into()))]),
        ]);
        let got = read_reply(map(vec![("k", arr(vec![e]))]), "k").unwrap();
        assert_eq!(got, [Entry { id: "5-1".into(), body: Body::Payload(vec![0xff, b'{']) }]);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(read_reply(Value::Integer(1), "k").is_err());
        assert!(read_reply(arr(vec![s("k")]), "k").is_err());
        assert!(read_reply(arr(vec![arr(vec![s("k"), arr(vec![s("1-0")]), s("x")])]), "k").is_err());
        assert!(autoclaim_reply(s("0-0")).is_err());
        assert!(pending_reply(arr(vec![arr(vec![s("1-0")])])).is_err());
    }

    #[test]
    fn xautoclaim_with_deleted_ids() {
        let reply = arr(vec![
            s("7-0"),
            arr(vec![entry("1-0", &[("payload", "{}")]), Value::Null]),
            arr(vec![s("2-0"), s("3-0")]),
        ]);
        let c = autoclaim_reply(reply).unwrap();
        assert_eq!(c.cursor, "7-0");
        assert_eq!(c.entries, [payload("1-0", "{}")]);
        assert_eq!(c.deleted, ["2-0", "3-0"]);
        // Redis 6.2: two elements.
        let c = autoclaim_reply(arr(vec![s("0-0"), arr(vec![])])).unwrap();
        assert_eq!(c, Claimed { cursor: "0-0".into(), ..Claimed::default() });
    }

    #[test]
    fn xpending_delivery_counts() {
        let reply = arr(vec![
            arr(vec![s("1-0"), s("c"), Value::Integer(10), Value::Integer(6)]),
            arr(vec![s("1-1"), s("c"), Value::Integer(10), Value::Integer(1)]),
        ]);
        assert_eq!(pending_reply(reply).unwrap(), [("1-0".to_owned(), 6), ("1-1".to_owned(), 1)]);
    }

    #[test]
    fn xinfo_groups_in_both_shapes() {
        let flat = arr(vec![
            arr(vec![s("name"), s("other"), s("pending"), Value::Integer(9)]),
            arr(vec![s("name"), s("g"), s("pending"), Value::Integer(3), s("lag"), Value::Integer(12)]),
        ]);
        assert_eq!(group_info_reply(flat, "g").unwrap(), Some(GroupInfo { pending: 3, lag: Some(12) }));
        let maps = arr(vec![map(vec![("name", s("g")), ("pending", Value::Integer(0)), ("lag", Value::Null)])]);
        assert_eq!(group_info_reply(maps, "g").unwrap(), Some(GroupInfo { pending: 0, lag: None }));
        assert_eq!(group_info_reply(arr(vec![]), "g").unwrap(), None);
    }
}
