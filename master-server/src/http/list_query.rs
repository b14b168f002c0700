//! Parsing of `GET /v1/sessions?game=G[&attr.KEY=VALUE...][&has_space=true][&limit=N][&cursor=C]`.
//!
//! Unknown parameters, repeated scalar parameters and out-of-range values are 400s, so a
//! typo in a filter never silently widens a list. [`parameters`] describes the same rules
//! for the OpenAPI document.

use crate::error::ApiError;
use crate::index::ListFilter;
use serde_json::{json, Value};

use crate::validate;

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 200;
/// Most digits of a cursor (a row's `seq`).
pub const MAX_CURSOR_DIGITS: usize = 18;
/// Accepted spellings of `has_space`.
const BOOLEANS: [(&str, bool); 4] = [("true", true), ("1", true), ("false", false), ("0", false)];

/// The query parameters of `GET /v1/sessions` as OpenAPI 3.1 parameter objects.
pub fn parameters() -> Value {
    let game = crate::http::openapi::text_schema(validate::MAX_GAME_LEN);
    json!([
        {"name": "game", "in": "query", "required": true, "schema": game,
         "description": "The game to list."},
        {"name": "attr", "in": "query", "required": false, "style": "form", "explode": true,
         "description": format!(
             "Attribute filters, each a separate query parameter `attr.KEY=VALUE` (all must \
              match; at most {} of them; KEY 1 to {} characters, VALUE up to {}).",
             validate::MAX_ATTRIBUTES, validate::MAX_ATTR_KEY_LEN, validate::MAX_ATTR_VALUE_LEN),
         "schema": {"type": "object", "maxProperties": validate::MAX_ATTRIBUTES,
                    "propertyNames": {"pattern": format!("^attr\\.[\\s\\S]{{1,{}}}$",
                                                         validate::MAX_ATTR_KEY_LEN)},
                    "additionalProperties": {"type": "string",
                                             "maxLength": validate::MAX_ATTR_VALUE_LEN}}},
        {"name": "has_space", "in": "query", "required": false,
         "description": "Only sessions with a free slot (`true` or `1`).",
         "schema": {"type": "string", "enum": BOOLEANS.map(|(text, _)| text)}},
        {"name": "limit", "in": "query", "required": false,
         "description": format!("Page size, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}); \
                                 digits only."),
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
        {"name": "cursor", "in": "query", "required": false,
         "description": "The `next_cursor` of the previous page.",
         "schema": {"type": "string",
                    "pattern": format!("^[0-9]{{1,{MAX_CURSOR_DIGITS}}}$")}},
    ])
}

/// `value` as a number if it is 1 to `max_digits` ASCII digits.
fn digits(value: &str, max_digits: usize) -> Option<u64> {
    let plain =
        !value.is_empty() && value.len() <= max_digits && value.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| value.parse().ok()).flatten()
}

/// Parses a list query string into a filter.
pub fn parse(query: Option<&str>) -> Result<ListFilter, ApiError> {
    let mut game = None;
    let mut filter = ListFilter {
        limit: DEFAULT_LIMIT,
        ..ListFilter::default()
    };
    let (mut seen_game, mut seen_limit, mut seen_cursor, mut seen_space) =
        (false, false, false, false);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if let Some(attr) = key.strip_prefix("attr.") {
            if filter.attributes.len() == validate::MAX_ATTRIBUTES {
                return Err(ApiError::bad(
                    "too_many_attributes",
                    format!("at most {} attribute filters", validate::MAX_ATTRIBUTES),
                ));
            }
            if attr.is_empty()
                || validate::chars(attr) > validate::MAX_ATTR_KEY_LEN
                || validate::chars(&value) > validate::MAX_ATTR_VALUE_LEN
            {
                return Err(ApiError::bad(
                    "invalid_query",
                    "attribute filter too long or empty",
                ));
            }
            filter
                .attributes
                .push((attr.to_owned(), value.into_owned()));
            continue;
        }
        match &*key {
            "game" => {
                once(&mut seen_game, "game")?;
                validate::game(&value).map_err(|_| {
                    ApiError::bad(
                        "invalid_query",
                        format!(
                            "`game` must be 1 to {} characters of text",
                            validate::MAX_GAME_LEN
                        ),
                    )
                })?;
                game = Some(value.into_owned());
            }
            "has_space" => {
                once(&mut seen_space, "has_space")?;
                filter.has_space = BOOLEANS
                    .iter()
                    .find(|(text, _)| *text == value)
                    .map(|(_, flag)| *flag)
                    .ok_or_else(|| {
                        ApiError::bad("invalid_query", "`has_space` must be true or false")
                    })?;
            }
            "limit" => {
                once(&mut seen_limit, "limit")?;
                filter.limit = digits(&value, 3)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad("invalid_query", format!("`limit` must be 1 to {MAX_LIMIT}"))
                    })?;
            }
            "cursor" => {
                once(&mut seen_cursor, "cursor")?;
                let seq = digits(&value, MAX_CURSOR_DIGITS).and_then(|n| i64::try_from(n).ok());
                filter.after_seq =
                    Some(seq.ok_or_else(|| ApiError::bad("invalid_cursor", "malformed cursor"))?);
            }
            other => {
                return Err(ApiError::bad(
                    "invalid_query",
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    filter.game = game.ok_or_else(|| ApiError::bad("invalid_query", "`game` is required"))?;
    Ok(filter)
}

fn once(seen: &mut bool, name: &str) -> Result<(), ApiError> {
    if std::mem::replace(seen, true) {
        return Err(ApiError::bad(
            "invalid_query",
            format!("`{name}` given twice"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_parameter() {
        let f = parse(Some(
            "game=g%201&attr.mode=ctf&attr.map=x&has_space=true&limit=7&cursor=42",
        ))
        .expect("valid");
        assert_eq!(f.game, "g 1");
        assert_eq!(
            f.attributes,
            vec![("mode".into(), "ctf".into()), ("map".into(), "x".into())]
        );
        assert!(f.has_space);
        assert_eq!(f.limit, 7);
        assert_eq!(f.after_seq, Some(42));
    }

    #[test]
    fn rejects_bad_queries() {
        for q in [
            "",
            "game=",
            "game=a&game=b",
            "game=g&limit=0",
            "game=g&limit=201",
            "game=g&limit=x",
            "game=g&cursor=-1",
            "game=g&cursor=+1",
            "game=g&cursor=1234567890123456789",
            "game=g&limit=+5",
            "game=g&cursor=abc",
            "game=g&has_space=maybe",
            "game=g&colour=red",
            "game=g&attr.=x",
        ] {
            assert!(parse(Some(q)).is_err(), "{q} should be rejected");
        }
    }
}
