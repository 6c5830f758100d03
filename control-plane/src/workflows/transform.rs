//! The transform node's jq filters, run by jaq.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

/// Outputs one filter may produce.
const MAX_OUTPUTS: usize = 10_000;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

pub fn compile(code: &str) -> Result<Filter, String> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs).load(&arena, File { code, path: () }).map_err(|errors| {
        format!("the filter does not parse ({} error(s): {:?})", errors.len(), errors.first().map(|e| &e.1))
    })?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errors| format!("the filter does not compile ({} error(s))", errors.len()))
}

/// Runs a filter over a JSON value: one output is that value, several an array of them.
pub fn run(code: &str, input: &serde_json::Value) -> Result<serde_json::Value, String> {
    let filter = compile(code)?;
    let text = input.to_string();
    let input = jaq_json::read::parse_single(text.as_bytes()).map_err(|e| format!("the input is not JSON: {e}"))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut outputs = Vec::new();
    for output in filter.id.run((ctx, input)).map(unwrap_valr).take(MAX_OUTPUTS + 1) {
        let value = output.map_err(|e| format!("the filter failed: {e}"))?;
        outputs.push(serde_json::from_str::<serde_json::Value>(&value.to_string()).map_err(|e| e.to_string())?);
    }
    if outputs.len() > MAX_OUTPUTS {
        return Err(format!("the filter produced more than {MAX_OUTPUTS} outputs"));
    }
    Ok(if outputs.len() == 1 { outputs.remove(0) } else { serde_json::Value::Array(outputs) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_filter_reshapes_its_input() {
        let input = json!({"services": [{"name": "web", "up": true}, {"name": "db", "up": false}]});
        assert_eq!(run("[.services[] | select(.up) | .name]", &input).expect("runs"), json!(["web"]));
        assert_eq!(run(".services[] | .name", &input).expect("runs"), json!(["web", "db"]));
    }

    #[test]
    fn a_bad_filter_is_refused_at_compile_time_and_a_failing_one_at_run_time() {
        assert!(compile(".services[").is_err());
        assert!(run(".a + 1", &json!({"a": "text"})).expect_err("refused").contains("failed"));
    }
}
