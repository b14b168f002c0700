//! JSON lines on stdout: one event per line.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

/// Prints one event as a JSON line.
pub fn emit<T: Serialize + ?Sized>(line: &T) {
    let text = serde_json::to_string(line).unwrap_or_else(|e| {
        serde_json::json!({"event": "error", "kind": "json", "detail": e.to_string()}).to_string()
    });
    println!("{text}");
}

/// Prints `{"event":"error","kind":..,"detail":..}` and returns the failure exit code.
pub fn error_line(kind: &str, detail: &str) -> ExitCode {
    emit(&serde_json::json!({"event": "error", "kind": kind, "detail": detail}));
    ExitCode::FAILURE
}

/// A duration in milliseconds with microsecond precision.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
