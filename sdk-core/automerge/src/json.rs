//! A document as JSON, and edits addressed by JSON paths: what the browser API speaks.
//!
//! A path is a JSON array of map keys (strings) and list indices (numbers) from the root:
//! `["todos", 0, "title"]`. Maps and lists become JSON objects and arrays; text objects become
//! strings; scalars become their JSON value (counters their number, timestamps milliseconds,
//! bytes an array of numbers).

use crate::Error;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue, Value as AmValue};
use serde_json::Value;

fn bad(what: impl Into<String>) -> Error {
    Error::Edit(what.into())
}

fn am(e: automerge::AutomergeError) -> Error {
    Error::Edit(e.to_string())
}

fn prop(step: &Value) -> Result<Prop, Error> {
    match step {
        Value::String(k) => Ok(Prop::Map(k.clone())),
        Value::Number(n) => n
            .as_u64()
            .map(|i| Prop::Seq(i as usize))
            .ok_or_else(|| bad(format!("path step {n}: a list index is a whole number ≥ 0"))),
        other => Err(bad(format!("path step {other}: a key (string) or an index (number)"))),
    }
}

/// The object at `path` (the root for `[]`).
pub fn object(doc: &AutoCommit, path: &[Value]) -> Result<ObjId, Error> {
    let mut at = ROOT;
    for (i, step) in path.iter().enumerate() {
        match doc.get(&at, prop(step)?).map_err(am)? {
            Some((AmValue::Object(_), id)) => at = id,
            Some(_) => return Err(bad(format!("{}: not a map, list or text", show(&path[..=i])))),
            None => return Err(bad(format!("{}: nothing there", show(&path[..=i])))),
        }
    }
    Ok(at)
}

fn show(path: &[Value]) -> String {
    Value::Array(path.to_vec()).to_string()
}

/// The parent object of `path`'s last step, and that step.
fn parent(doc: &AutoCommit, path: &[Value]) -> Result<(ObjId, Prop), Error> {
    let (last, init) = path.split_last().ok_or_else(|| bad("the path is empty: name a key"))?;
    Ok((object(doc, init)?, prop(last)?))
}

fn scalar(v: &Value) -> Option<ScalarValue> {
    Some(match v {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int(i),
            None => ScalarValue::F64(n.as_f64()?),
        },
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

fn obj_type(v: &Value) -> ObjType {
    if v.is_array() { ObjType::List } else { ObjType::Map }
}

/// Fill a new map or list with `v`'s contents.
fn fill(doc: &mut AutoCommit, obj: &ObjId, v: &Value) -> Result<(), Error> {
    match v {
        Value::Object(fields) => {
            for (k, v) in fields {
                put_at(doc, obj, Prop::Map(k.clone()), v)?;
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                insert_at(doc, obj, i, v)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn put_at(doc: &mut AutoCommit, obj: &ObjId, p: Prop, v: &Value) -> Result<(), Error> {
    match scalar(v) {
        Some(s) => doc.put(obj, p, s).map_err(am),
        None => {
            let child = doc.put_object(obj, p, obj_type(v)).map_err(am)?;
            fill(doc, &child, v)
        }
    }
}

fn insert_at(doc: &mut AutoCommit, obj: &ObjId, index: usize, v: &Value) -> Result<(), Error> {
    match scalar(v) {
        Some(s) => doc.insert(obj, index, s).map_err(am),
        None => {
            let child = doc.insert_object(obj, index, obj_type(v)).map_err(am)?;
            fill(doc, &child, v)
        }
    }
}

fn expect(doc: &AutoCommit, obj: &ObjId, path: &[Value], want: &[ObjType]) -> Result<(), Error> {
    let t = doc.object_type(obj).map_err(am)?;
    if want.contains(&t) {
        Ok(())
    } else {
        Err(bad(format!("{}: a {t:?}, not a {want:?}", show(path))))
    }
}

/// Set `path` (a map key, or an existing list index) to `value`: objects and arrays become
/// nested maps and lists, strings plain (non-collaborative) strings.
pub fn put(doc: &mut AutoCommit, path: &[Value], value: &Value) -> Result<(), Error> {
    let (obj, p) = parent(doc, path)?;
    put_at(doc, &obj, p, value)
}

/// Make `path` a collaborative text holding `text`.
pub fn put_text(doc: &mut AutoCommit, path: &[Value], text: &str) -> Result<(), Error> {
    let (obj, p) = parent(doc, path)?;
    let t = doc.put_object(&obj, p, ObjType::Text).map_err(am)?;
    doc.splice_text(&t, 0, 0, text).map_err(am)
}

/// In the text at `path`, delete `delete` characters at `index` and insert `insert` there.
/// Indices count in the document's text encoding (UTF-16 code units in the browser).
pub fn splice(
    doc: &mut AutoCommit,
    path: &[Value],
    index: usize,
    delete: usize,
    insert: &str,
) -> Result<(), Error> {
    let obj = object(doc, path)?;
    expect(doc, &obj, path, &[ObjType::Text])?;
    let len = doc.length(&obj);
    if index > len || delete > len - index {
        return Err(bad(format!(
            "{}: splice at {index} deleting {delete} is past the end ({len})",
            show(path)
        )));
    }
    doc.splice_text(&obj, index, delete as isize, insert).map_err(am)
}

/// Insert `value` into the list at `path`, before `index` (its length: at the end).
pub fn insert(
    doc: &mut AutoCommit,
    path: &[Value],
    index: usize,
    value: &Value,
) -> Result<(), Error> {
    let obj = object(doc, path)?;
    expect(doc, &obj, path, &[ObjType::List])?;
    if index > doc.length(&obj) {
        return Err(bad(format!("{}: index {index} is past the end", show(path))));
    }
    insert_at(doc, &obj, index, value)
}

/// Delete the map key or list element at `path`.
pub fn delete(doc: &mut AutoCommit, path: &[Value]) -> Result<(), Error> {
    let (obj, p) = parent(doc, path)?;
    if let Prop::Seq(i) = p
        && i >= doc.length(&obj)
    {
        return Err(bad(format!("{}: past the end", show(path))));
    }
    doc.delete(&obj, p).map_err(am)
}

/// The value at `path` as JSON (`None`: nothing there).
pub fn get(doc: &AutoCommit, path: &[Value]) -> Result<Option<Value>, Error> {
    if path.is_empty() {
        return Ok(Some(to_json(doc, &ROOT)));
    }
    let (obj, p) = match parent(doc, path) {
        Ok(x) => x,
        Err(_) => return Ok(None),
    };
    Ok(match doc.get(&obj, p).map_err(am)? {
        Some((AmValue::Object(_), id)) => Some(to_json(doc, &id)),
        Some((AmValue::Scalar(s), _)) => Some(scalar_json(&s)),
        None => None,
    })
}

fn scalar_json(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Str(s) => Value::from(s.as_str()),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Value::from(*i),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::F64(f) => Value::from(*f),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Boolean(b) => Value::from(*b),
        ScalarValue::Bytes(b) => Value::from(b.clone()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Value::Null,
    }
}

/// The object `obj` as JSON.
pub fn to_json(doc: &AutoCommit, obj: &ObjId) -> Value {
    let at = |p: Prop| match doc.get(obj, p) {
        Ok(Some((AmValue::Object(_), id))) => to_json(doc, &id),
        Ok(Some((AmValue::Scalar(s), _))) => scalar_json(&s),
        _ => Value::Null,
    };
    match doc.object_type(obj) {
        Ok(ObjType::Map | ObjType::Table) => {
            Value::Object(doc.keys(obj).map(|k| (k.clone(), at(Prop::Map(k)))).collect())
        }
        Ok(ObjType::List) => Value::Array((0..doc.length(obj)).map(|i| at(Prop::Seq(i))).collect()),
        Ok(ObjType::Text) => Value::from(doc.text(obj).unwrap_or_default()),
        Err(_) => Value::Null,
    }
}
