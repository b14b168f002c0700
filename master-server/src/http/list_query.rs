//! Parsing of `GET /v1/sessions?game=G[&attr.KEY=VALUE...][&has_space=true][&limit=N][&cursor=C]`.
//!
//! Unknown parameters, repeated scalar parameters and out-of-range values are 400s, so a
//! typo in a filter never silently widens a list.

use crate::error::ApiError;
use crate::index::ListFilter;
use crate::validate;

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 200;

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
                || attr.len() > validate::MAX_ATTR_KEY_LEN
                || value.len() > validate::MAX_ATTR_VALUE_LEN
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
                    ApiError::bad("invalid_query", "`game` must be 1 to 64 bytes of text")
                })?;
                game = Some(value.into_owned());
            }
            "has_space" => {
                once(&mut seen_space, "has_space")?;
                filter.has_space = match &*value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::bad(
                            "invalid_query",
                            "`has_space` must be true or false",
                        ))
                    }
                };
            }
            "limit" => {
                once(&mut seen_limit, "limit")?;
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad("invalid_query", format!("`limit` must be 1 to {MAX_LIMIT}"))
                    })?;
            }
            "cursor" => {
                once(&mut seen_cursor, "cursor")?;
                let seq = value.parse::<i64>().ok().filter(|n| *n >= 0);
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
            "game=g&cursor=abc",
            "game=g&has_space=maybe",
            "game=g&colour=red",
            "game=g&attr.=x",
        ] {
            assert!(parse(Some(q)).is_err(), "{q} should be rejected");
        }
    }
}
