//! The OpenAPI document's limits agree with the handlers' checks: for generated strings
//! (white space, control characters, multibyte text, long runs) the schema of a text
//! field accepts exactly what `validate` accepts, and the list parameters' schemas accept
//! exactly what the list parser accepts.

use master_server::http::{list_query, openapi};
use master_server::validate;
use proptest::prelude::*;
use serde_json::{json, Value};

fn validator(schema: Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

/// Strings built from the characters that matter to the rules.
fn tricky_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just(" "),
        Just("\t"),
        Just("\n"),
        Just("\u{0}"),
        Just("\u{7f}"),
        Just("\u{85}"),
        Just("\u{a0}"),
        Just("\u{3000}"),
        Just("\u{feff}"),
        Just("a"),
        Just("é"),
        Just("漢"),
        Just("🎮"),
    ];
    prop::collection::vec(pieces, 0..80).prop_map(|v| v.concat())
}

fn param_schema(name: &str) -> Value {
    let params = list_query::parameters();
    params
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .map(|p| p["schema"].clone())
        .expect("parameter documented")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn text_schema_matches_the_check(s in tricky_text()) {
        let schema = validator(openapi::text_schema(validate::MAX_GAME_LEN));
        prop_assert_eq!(schema.is_valid(&json!(s)), validate::game(&s).is_ok(), "{:?}", s);
    }

    #[test]
    fn list_parameters_match_the_parser(n in "[0-9+-]{0,20}") {
        let limit_ok = list_query::parse(Some(&format!("game=g&limit={n}"))).is_ok();
        let limit_schema = n.parse::<u64>().ok().filter(|_| !n.starts_with('+'))
            .is_some_and(|v| validator(param_schema("limit")).is_valid(&json!(v)));
        prop_assert_eq!(limit_ok, limit_schema && n.len() <= 3, "limit {:?}", n);
        let cursor_ok = list_query::parse(Some(&format!("game=g&cursor={n}"))).is_ok();
        let cursor_schema = validator(param_schema("cursor")).is_valid(&json!(n));
        prop_assert_eq!(cursor_ok, cursor_schema, "cursor {:?}", n);
    }
}
