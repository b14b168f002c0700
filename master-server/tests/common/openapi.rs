//! Checks a response against the server's OpenAPI document: the status must be documented
//! for the operation, and a JSON body must match the documented schema (with `$ref`s
//! resolved against the document's components, formats checked).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

/// The document and the validators compiled from it so far.
pub struct Spec {
    doc: Value,
    validators: Mutex<HashMap<String, jsonschema::Validator>>,
}

impl Spec {
    pub fn new(doc: Value) -> Spec {
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "OpenAPI 3.1 document"
        );
        Spec {
            doc,
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// The path template documenting `path`, if any.
    fn template(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"].as_object()?.keys().find_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            let fits = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, seg)| (part.starts_with('{') && !seg.is_empty()) || part == seg);
            fits.then_some(template.as_str())
        })
    }

    /// Panics unless the answer to `method path` is documented and matches its schema.
    /// Undocumented routes and methods (fallbacks, `/healthz`, `/metrics`) are skipped.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &Value,
    ) {
        let Some(template) = self.template(path) else {
            return;
        };
        let method = method.as_str().to_ascii_lowercase();
        let operation = &self.doc["paths"][template][&method];
        if operation.is_null() {
            return;
        }
        let answer = &operation["responses"][status.as_str()];
        assert!(
            answer.is_object(),
            "{method} {path}: status {status} is not in the OpenAPI document (body {body})"
        );
        let Some(schema) = answer.pointer("/content/application~1json/schema") else {
            assert_eq!(
                body,
                &Value::Null,
                "{method} {path} {status}: no body documented"
            );
            return;
        };
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path} {status}: content-type {content_type:?}"
        );
        let key = format!("{template} {method} {status}");
        let mut validators = self.validators.lock().expect("validators");
        let validator = validators.entry(key).or_insert_with(|| {
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": self.doc["components"],
                "allOf": [schema],
            });
            jsonschema::options()
                .should_validate_formats(true)
                .build(&root)
                .unwrap_or_else(|err| panic!("schema of {template} {method} {status}: {err}"))
        });
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: body does not match the OpenAPI document: {errors:?}\n{body}"
        );
    }
}
