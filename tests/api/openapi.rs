//! Checks real responses against schema/openapi.json and real frames against
//! schema/ws.json, with the `jsonschema` crate (JSON Schema 2020-12, the dialect of
//! OpenAPI 3.1). Each schema is compiled once; a `$ref` into a document's components
//! resolves against that document, registered under a URN of its own.

use std::collections::HashMap;
use std::sync::LazyLock;

use jsonschema::{Draft, Registry, Validator};
use serde_json::{Value, json};

const OPENAPI: &str = "urn:souq:openapi";
const WS: &str = "urn:souq:ws";

/// The keywords the documents use. The crate ignores a keyword it does not know, so a
/// misspelt one (`requried`) would check nothing: every schema of the documents is held
/// to this list.
const KNOWN: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "$ref",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "description",
    "format",
    "examples",
    "oneOf",
];

fn load(name: &str) -> Value {
    let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| load("openapi.json"));
static FRAMES: LazyLock<Value> = LazyLock::new(|| load("ws.json"));

/// A copy of `schema` whose refs into its own document (`#/components/...`) point into
/// that document as registered (`base#/components/...`).
fn anchored(schema: &Value, base: &str) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(r)) if r.starts_with('#') => {
                        (k.clone(), Value::String(format!("{base}{r}")))
                    }
                    _ => (k.clone(), anchored(v, base)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| anchored(v, base)).collect()),
        other => other.clone(),
    }
}

/// Every schema the tests check against, by name: `get /v1/chats/{id} 200`, `error`,
/// `client send`, `server ack`.
static VALIDATORS: LazyLock<HashMap<String, Validator>> = LazyLock::new(|| {
    let registry = Registry::new()
        .draft(Draft::Draft202012)
        .add(OPENAPI, &*DOCUMENT)
        .and_then(|r| r.add(WS, &*FRAMES))
        .and_then(|r| r.prepare())
        .unwrap_or_else(|e| panic!("the schema documents: {e}"));
    let options = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_registry(&registry);
    let mut validators = HashMap::new();
    let mut add = |name: String, base: &str, schema: &Value| {
        let validator = options
            .build(&anchored(schema, base))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        validators.insert(name, validator);
    };
    add(
        "error".into(),
        OPENAPI,
        &json!({"$ref": "#/components/schemas/Error"}),
    );
    for (template, item) in DOCUMENT["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                if let Some(schema) = response["content"]["application/json"].get("schema") {
                    add(format!("{method} {template} {status}"), OPENAPI, schema);
                }
            }
        }
    }
    for side in ["client", "server"] {
        for (ty, schema) in FRAMES[side].as_object().expect("frames") {
            add(format!("{side} {ty}"), WS, schema);
        }
    }
    validators
});

/// Checks `value` against the schema named `name`; the error lists every failure with
/// the JSON pointer where it is.
fn check(name: &str, value: &Value) -> Result<(), String> {
    let validator = VALIDATORS
        .get(name)
        .unwrap_or_else(|| panic!("no schema for {name}"));
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("  at {:?}: {e}", e.instance_path().to_string()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn check_frame(side: &str, frame: &Value) {
    let ty = frame["type"]
        .as_str()
        .unwrap_or_else(|| panic!("frame without a type: {frame}"));
    let name = format!("{side} {ty}");
    assert!(
        VALIDATORS.contains_key(&name),
        "{side} frame type {ty:?} is not in schema/ws.json: {frame}"
    );
    if let Err(e) = check(&name, frame) {
        panic!("{side} {ty} frame does not match schema/ws.json:\n{e}\n{frame}");
    }
}

/// Panics unless `frame` is a client frame as schema/ws.json describes it.
pub fn check_client_frame(frame: &Value) {
    check_frame("client", frame);
}

/// Panics unless `frame` is a server frame as schema/ws.json describes it.
pub fn check_server_frame(frame: &Value) {
    check_frame("server", frame);
}

/// Finds the documented path template matching a concrete path (`/v1/chats/7` matches
/// `/v1/chats/{id}`).
fn template_for(path: &str) -> Option<(&'static str, &'static Value)> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    DOCUMENT["paths"]
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
        if let Err(e) = check("error", body) {
            panic!("{method} {path} → {status}: undocumented path, and not an error:\n{e}\n{body}");
        }
        return;
    };
    let method = method.to_lowercase();
    let Some(operation) = item.get(&method) else {
        assert_eq!(
            status, 405,
            "{method} {template} is not documented but answered {status}"
        );
        check("error", body).unwrap_or_else(|e| panic!("405 body:\n{e}"));
        return;
    };
    let response = operation["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| {
            panic!("{method} {template}: status {status} is not documented\n{body}")
        });
    if response["content"]["application/json"]
        .get("schema")
        .is_some()
    {
        if let Err(e) = check(&format!("{method} {template} {status}"), body) {
            panic!(
                "{method} {template} → {status}: response does not match the document:\n{e}\n{body}"
            );
        }
    } else {
        assert!(
            body.is_null(),
            "{method} {template} → {status}: documented without a body, got {body}"
        );
    }
}

#[test]
fn the_schemas_refuse_what_the_documents_forbid() {
    let ack = json!({"type": "ack", "chat_id": 1, "local_id": "a", "message_id": 7, "seq": 1});
    assert!(
        check("server ack", &ack).is_ok(),
        "{:?}",
        check("server ack", &ack)
    );
    let mut bad = Vec::new();
    for (field, value) in [
        ("seq", Value::Null),
        ("seq", json!("1")),
        ("chat_id", Value::Null),
        ("extra", json!(true)),
    ] {
        let mut frame = ack.clone();
        frame[field] = value;
        bad.push(frame);
    }
    let mut missing = ack.clone();
    missing.as_object_mut().expect("an object").remove("seq");
    bad.push(missing);
    for frame in bad {
        assert!(check("server ack", &frame).is_err(), "accepted {frame}");
    }
    // Through a $ref into the components: a message whose author has a field too many.
    let message = json!({
        "type": "message",
        "chat_id": 1,
        "message": {
            "id": 7, "chat_id": 1, "seq": 1, "local_id": null,
            "author": {"kind": "customer", "id": 3, "extra": 1},
            "payload": "text", "text": "hi", "file_id": null, "status": "sent",
            "created_at": 0, "received_at": null, "read_at": null
        }
    });
    let err = check("server message", &message).expect_err("accepted an extra field");
    assert!(err.contains("/message/author"), "{err}");
    assert!(
        check(
            "error",
            &json!({"error": {"code": "not_found", "message": "y"}})
        )
        .is_ok()
    );
    assert!(check("error", &json!({"error": {"code": "lost", "message": "y"}})).is_err());
    assert!(check("error", &json!({"error": {"code": 1, "message": "y"}})).is_err());
}

#[test]
fn every_schema_compiles_and_uses_only_known_keywords() {
    fn walk(v: &Value, in_schema: bool, at: &str) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if in_schema && !KNOWN.contains(&k.as_str()) {
                        panic!("keyword {k:?} at {at} is not one the documents use");
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
    assert!(
        DOCUMENT["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "an OpenAPI 3.1 document, whose schemas are JSON Schema 2020-12"
    );
    LazyLock::force(&VALIDATORS);
    for (doc, name) in [(&*DOCUMENT, "openapi.json"), (&*FRAMES, "ws.json")] {
        for (schema_name, schema) in doc["components"]["schemas"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no components"))
        {
            walk(
                schema,
                true,
                &format!("{name} components.schemas.{schema_name}"),
            );
            if let Err(e) = jsonschema::meta::validate(schema) {
                panic!("{name} {schema_name}: {e}");
            }
        }
    }
    walk(&DOCUMENT["paths"], false, "paths");
    for side in ["client", "server"] {
        for (name, schema) in FRAMES[side].as_object().expect("frames") {
            walk(schema, true, &format!("ws {side}.{name}"));
        }
    }
}
