//! Input limits and checks for session rows.
//!
//! Every create and patch is checked against the same limits before it reaches the
//! database; a failure is a 400 naming the field. Lengths count characters (Unicode scalar
//! values), as JSON Schema's `maxLength` does, so the OpenAPI document
//! ([`crate::http::openapi`], built from these constants) states them exactly. The limits
//! keep a row bounded (at most about 44 KiB, typically a few hundred bytes) so the
//! in-memory index stays bounded.

use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::model::Attributes;

/// Longest game name, in characters.
pub const MAX_GAME_LEN: usize = 64;
/// Longest session name, in characters.
pub const MAX_NAME_LEN: usize = 128;
/// Largest `max_players`.
pub const MAX_PLAYERS: u32 = 65_535;
/// Most attributes per row.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key, in characters.
pub const MAX_ATTR_KEY_LEN: usize = 64;
/// Longest attribute value, in characters.
pub const MAX_ATTR_VALUE_LEN: usize = 256;
/// Largest `connect` object, in bytes of JSON.
pub const MAX_CONNECT_LEN: usize = 2048;

/// `game` and `name` as a JSON Schema pattern: no control character (Unicode `Cc`) and at
/// least one character that is neither white space (Unicode `White_Space`) nor control.
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*\
    [^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]\
    [^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// The number of characters in `s` (what JSON Schema's `maxLength` counts).
pub fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Checks a game name (also used for the `game` list filter).
pub fn game(game: &str) -> Result<(), ApiError> {
    text("game", game, MAX_GAME_LEN)
}

/// Checks a session display name.
pub fn name(name: &str) -> Result<(), ApiError> {
    text("name", name, MAX_NAME_LEN)
}

fn text(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad(
            "invalid_field",
            format!("`{field}` must not be empty"),
        ));
    }
    if chars(value) > max {
        return Err(ApiError::bad(
            "invalid_field",
            format!("`{field}` is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_field",
            format!("`{field}` must not contain control characters"),
        ));
    }
    Ok(())
}

/// Checks player counts.
pub fn counts(max_players: u32, players: u32) -> Result<(), ApiError> {
    if max_players == 0 || max_players > MAX_PLAYERS {
        return Err(ApiError::bad(
            "invalid_field",
            format!("`max_players` must be between 1 and {MAX_PLAYERS}"),
        ));
    }
    if players > max_players {
        return Err(ApiError::bad(
            "invalid_field",
            format!("`players` ({players}) exceeds `max_players` ({max_players})"),
        ));
    }
    Ok(())
}

/// Checks a heartbeat timeout against the server's range.
pub fn timeout(secs: u32, min: u32, max: u32) -> Result<(), ApiError> {
    if secs < min || secs > max {
        return Err(ApiError::bad(
            "timeout_out_of_range",
            format!("`timeout_secs` must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Checks the attribute map's size and entries.
pub fn attributes(attrs: &Attributes) -> Result<(), ApiError> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(ApiError::bad(
            "too_many_attributes",
            format!("at most {MAX_ATTRIBUTES} attributes are allowed"),
        ));
    }
    for (key, value) in attrs {
        if key.is_empty() || chars(key) > MAX_ATTR_KEY_LEN {
            return Err(ApiError::bad(
                "invalid_attribute",
                format!("attribute keys must be 1 to {MAX_ATTR_KEY_LEN} characters"),
            ));
        }
        if chars(value) > MAX_ATTR_VALUE_LEN {
            return Err(ApiError::bad(
                "invalid_attribute",
                format!("attribute `{key}` is longer than {MAX_ATTR_VALUE_LEN} characters"),
            ));
        }
    }
    Ok(())
}

/// Checks that `connect` is a JSON object of at most [`MAX_CONNECT_LEN`] bytes.
pub fn connect(connect: &RawValue) -> Result<(), ApiError> {
    let text = connect.get();
    if text.len() > MAX_CONNECT_LEN {
        return Err(ApiError::bad(
            "connect_too_large",
            format!("`connect` is larger than {MAX_CONNECT_LEN} bytes"),
        ));
    }
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::bad(
            "invalid_field",
            "`connect` must be a JSON object",
        ));
    }
    Ok(())
}

/// The `connect` value used when a create omits it.
pub fn empty_connect() -> Box<RawValue> {
    // "{}" always parses; the default (`null`) is never reached.
    RawValue::from_string("{}".to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_values_with_the_field_named() {
        assert!(game("").is_err());
        assert!(game("   ").is_err());
        assert!(game(&"g".repeat(65)).is_err());
        assert!(game(&"é".repeat(64)).is_ok(), "characters, not bytes");
        assert!(game("ok").is_ok());
        assert!(name("\u{3000}\u{a0}").is_err(), "white space only");
        assert!(name("a\u{7}").is_err());
        assert!(counts(0, 0).is_err());
        assert!(counts(4, 5).is_err());
        assert!(counts(4, 4).is_ok());
        assert!(timeout(4, 5, 3600).is_err());
        assert!(timeout(3601, 5, 3600).is_err());
        let many: Attributes = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(attributes(&many).is_err());
        let long_key: Attributes = [("k".repeat(65), "v".into())].into();
        assert!(attributes(&long_key).is_err());
        let long_value: Attributes = [("k".into(), "v".repeat(257))].into();
        assert!(attributes(&long_value).is_err());
        let arr = RawValue::from_string("[1]".into()).expect("valid json");
        assert!(connect(&arr).is_err());
        assert_eq!(empty_connect().get(), "{}");
    }
}
