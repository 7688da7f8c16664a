//! Checks real responses against schema/openapi.json with a small validator for the
//! subset of JSON Schema the document uses. An unknown keyword fails loudly instead of
//! being skipped, so the document cannot say more than is checked.

use std::sync::OnceLock;

use serde_json::{Map, Value};

const ALLOWED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "$ref",
    "minimum",
    "maximum",
    "description",
    "format",
    "examples",
];

fn load(name: &str) -> Value {
    let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| load("openapi.json"))
}

/// schema/ws.json: the WebSocket frames.
pub fn frames() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| load("ws.json"))
}

/// Panics unless `frame` is a client frame as schema/ws.json describes it.
pub fn check_client_frame(frame: &Value) {
    let ty = frame["type"]
        .as_str()
        .unwrap_or_else(|| panic!("frame without a type: {frame}"));
    let schema = frames()["client"]
        .get(ty)
        .unwrap_or_else(|| panic!("client frame type {ty:?} is not in schema/ws.json: {frame}"));
    if let Err(e) = validate_in(frames(), schema, frame, "$") {
        panic!("{ty} client frame does not match schema/ws.json: {e}\n{frame}");
    }
}

/// Panics unless `frame` is a server frame as schema/ws.json describes it.
pub fn check_server_frame(frame: &Value) {
    let ty = frame["type"]
        .as_str()
        .unwrap_or_else(|| panic!("frame without a type: {frame}"));
    let schema = frames()["server"]
        .get(ty)
        .unwrap_or_else(|| panic!("server frame type {ty:?} is not in schema/ws.json: {frame}"));
    if let Err(e) = validate_in(frames(), schema, frame, "$") {
        panic!("{ty} frame does not match schema/ws.json: {e}\n{frame}");
    }
}

/// Finds the documented path template matching a concrete path (`/v1/chats/7` matches
/// `/v1/chats/{id}`).
fn template_for(path: &str) -> Option<(&'static str, &'static Value)> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    document()["paths"]
        .as_object()?
        .iter()
        .find(|(template, _)| {
            let t: Vec<&str> = template.split('/').collect();
            t.len() == segments.len()
                && t.iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
        .map(|(t, v)| (t.as_str(), v))
}

/// Panics unless `body` is what the document says `method path` answers with `status`.
/// Paths the document does not describe (the 404 of an unknown path) are only checked
/// for the error shape.
pub fn check_response(method: &str, path: &str, status: u16, body: &Value) {
    let Some((template, item)) = template_for(path) else {
        let error = resolve("#/components/schemas/Error");
        if let Err(e) = validate(error, body, "$") {
            panic!("{method} {path} → {status}: undocumented path, and not an error: {e}\n{body}");
        }
        return;
    };
    let Some(operation) = item.get(method.to_lowercase()) else {
        let error = resolve("#/components/schemas/Error");
        assert_eq!(
            status, 405,
            "{method} {template} is not documented but answered {status}"
        );
        validate(error, body, "$").unwrap_or_else(|e| panic!("405 body: {e}"));
        return;
    };
    let response = operation["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| {
            panic!("{method} {template}: status {status} is not documented\n{body}")
        });
    match response["content"]["application/json"].get("schema") {
        Some(schema) => {
            if let Err(e) = validate(schema, body, "$") {
                panic!(
                    "{method} {template} → {status}: response does not match the document: {e}\n{body}"
                );
            }
        }
        None => assert!(
            body.is_null(),
            "{method} {template} → {status}: documented without a body, got {body}"
        ),
    }
}

fn resolve_in<'a>(root: &'a Value, reference: &str) -> &'a Value {
    let name = reference
        .strip_prefix("#/components/schemas/")
        .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
    root["components"]["schemas"]
        .get(name)
        .unwrap_or_else(|| panic!("$ref to a missing schema {name}"))
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown type {other} in the document"),
    }
}

fn resolve(reference: &str) -> &'static Value {
    resolve_in(document(), reference)
}

/// Validates against a schema of the OpenAPI document.
pub fn validate(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    validate_in(document(), schema, value, at)
}

/// Validates `value` against `schema`, resolving `$ref`s in `root`; the error names the
/// JSON path that failed.
pub fn validate_in(root: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = schema
        .as_object()
        .ok_or_else(|| format!("{at}: schema is not an object"))?;
    if let Some(key) = schema.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        panic!("schema keyword {key:?} at {at} is not supported by the test validator");
    }
    if let Some(Value::String(reference)) = schema.get("$ref") {
        return validate_in(root, resolve_in(root, reference), value, at);
    }
    if let Some(ty) = schema.get("type") {
        let ok = match ty {
            Value::String(t) => type_matches(t, value),
            Value::Array(ts) => ts
                .iter()
                .any(|t| type_matches(t.as_str().unwrap_or(""), value)),
            _ => return Err(format!("{at}: bad type keyword")),
        };
        if !ok {
            return Err(format!("{at}: expected type {ty}, got {value}"));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {options:?}"));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{at}: {n} is below the minimum {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{at}: {n} is above the maximum {max}"));
        }
    }
    if let Value::Object(object) = value {
        validate_object(root, schema, object, at)?;
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate_in(root, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn validate_object(
    root: &Value,
    schema: &Map<String, Value>,
    object: &Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    let empty = Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                return Err(format!("{at}: missing required field {name:?}"));
            }
        }
    }
    for (name, v) in object {
        match properties.get(name) {
            Some(s) => validate_in(root, s, v, &format!("{at}.{name}"))?,
            None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                return Err(format!("{at}: field {name:?} is not in the document"));
            }
            None => {}
        }
    }
    Ok(())
}

#[test]
fn the_validator_rejects_what_the_document_forbids() {
    let schema = serde_json::json!({
        "type": "object",
        "required": ["id", "status"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "status": {"type": "string", "enum": ["sent", "read"]},
            "note": {"type": ["string", "null"]}
        }
    });
    let ok = serde_json::json!({"id": 1, "status": "sent", "note": null});
    assert!(validate(&schema, &ok, "$").is_ok());
    for bad in [
        serde_json::json!({"id": 1}),
        serde_json::json!({"id": "1", "status": "sent"}),
        serde_json::json!({"id": 0, "status": "sent"}),
        serde_json::json!({"id": 1, "status": "lost"}),
        serde_json::json!({"id": 1, "status": "sent", "extra": true}),
        serde_json::json!({"id": 1, "status": "sent", "note": 5}),
    ] {
        assert!(validate(&schema, &bad, "$").is_err(), "accepted {bad}");
    }
}

#[test]
fn every_documented_schema_uses_only_supported_keywords() {
    fn walk(v: &Value, in_schema: bool, at: &str) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if in_schema && !ALLOWED.contains(&k.as_str()) {
                        panic!("unsupported keyword {k:?} at {at}");
                    }
                    let child_is_schema = k == "schema" || k == "items";
                    if k == "properties" {
                        if let Value::Object(props) = child {
                            for (name, s) in props {
                                walk(s, true, &format!("{at}.properties.{name}"));
                            }
                        }
                    } else if in_schema && k == "examples" {
                        continue;
                    } else {
                        walk(child, child_is_schema, &format!("{at}.{k}"));
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, false, &format!("{at}[{i}]"));
                }
            }
            _ => {}
        }
    }
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        walk(schema, true, &format!("components.schemas.{name}"));
    }
    walk(&doc["paths"], false, "paths");
    let ws = frames();
    for side in ["client", "server", "components"] {
        assert!(ws.get(side).is_some(), "schema/ws.json has no {side}");
    }
    for (name, schema) in ws["components"]["schemas"].as_object().expect("ws schemas") {
        walk(schema, true, &format!("ws components.schemas.{name}"));
    }
    for side in ["client", "server"] {
        for (name, schema) in ws[side].as_object().expect("frames") {
            walk(schema, true, &format!("ws {side}.{name}"));
        }
    }
}
