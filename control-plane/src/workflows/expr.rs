//! Templates and expressions over a run (minijinja): `{{ nodes.deploy.output.state }}` in a
//! node's text settings, `nodes.check.output.status == 200` as a condition. What a run offers:
//! `trigger` (what started it), `nodes.<id>` (`status`, `port`, `output`, `error`, `attempts`
//! of each node so far) and `run` (`id`, `workflow`).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use minijinja::{Environment, UndefinedBehavior, Value};

/// Work one evaluation may do, so that a template cannot spin forever.
const FUEL: u64 = 50_000;
const ROOTS: [&str; 3] = ["trigger", "nodes", "run"];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A name that is not there is an error, not an empty string: a typo fails the step.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
});

/// The names a template or expression uses, each checked: a known root, a node that exists.
fn check_names(names: impl IntoIterator<Item = String>, ids: &BTreeSet<&str>) -> Result<(), String> {
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort();
    for name in names {
        let mut parts = name.split('.');
        let root = parts.next().unwrap_or_default();
        if !ROOTS.contains(&root) {
            return Err(format!("`{root}` is not known here: use trigger, nodes.<id> or run"));
        }
        if root == "nodes"
            && let Some(node) = parts.next()
            && !ids.contains(node)
        {
            return Err(format!("there is no node `{node}`"));
        }
    }
    Ok(())
}

pub fn check_template(template: &str, ids: &BTreeSet<&str>) -> Result<(), String> {
    let compiled = ENV.template_from_str(template).map_err(describe)?;
    check_names(compiled.undeclared_variables(true), ids)
}

pub fn check_expression(expression: &str, ids: &BTreeSet<&str>) -> Result<(), String> {
    let compiled = ENV.compile_expression(expression).map_err(describe)?;
    check_names(compiled.undeclared_variables(true), ids)
}

pub fn render(template: &str, context: &serde_json::Value) -> Result<String, String> {
    ENV.render_str(template, Value::from_serialize(context)).map_err(describe)
}

pub fn eval(expression: &str, context: &serde_json::Value) -> Result<serde_json::Value, String> {
    let compiled = ENV.compile_expression(expression).map_err(describe)?;
    let value = compiled.eval(Value::from_serialize(context)).map_err(describe)?;
    serde_json::to_value(&value).map_err(|e| e.to_string())
}

/// Whether an expression is true, as Jinja sees it (`0`, `""`, `[]`, `none` and `false` are not).
pub fn truthy(expression: &str, context: &serde_json::Value) -> Result<bool, String> {
    let compiled = ENV.compile_expression(expression).map_err(describe)?;
    Ok(compiled.eval(Value::from_serialize(context)).map_err(describe)?.is_true())
}

/// Renders every text leaf of a node's settings (which are JSON), leaving the rest as it is.
pub fn render_leaves(settings: &serde_json::Value, context: &serde_json::Value) -> Result<serde_json::Value, String> {
    Ok(match settings {
        serde_json::Value::String(text) if text.contains("{{") || text.contains("{%") => {
            serde_json::Value::String(render(text, context)?)
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(|i| render_leaves(i, context)).collect::<Result<_, _>>()?)
        }
        serde_json::Value::Object(fields) => serde_json::Value::Object(
            fields.iter().map(|(k, v)| Ok((k.clone(), render_leaves(v, context)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn describe(error: minijinja::Error) -> String {
    let mut message = error.detail().map_or_else(|| error.kind().to_string(), |d| format!("{}: {d}", error.kind()));
    if let Some(line) = error.line() {
        message.push_str(&format!(" (line {line})"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids() -> BTreeSet<&'static str> {
        ["deploy", "check"].into_iter().collect()
    }

    #[test]
    fn templates_read_earlier_nodes_and_the_trigger() {
        let context = json!({"trigger": {"who": "ops"}, "nodes": {"deploy": {"output": {"state": "running"}}}});
        assert_eq!(
            render("{{ trigger.who }}: {{ nodes.deploy.output.state }}", &context).expect("evaluates"),
            "ops: running"
        );
        assert!(truthy("nodes.deploy.output.state == 'running'", &context).expect("evaluates"));
        assert_eq!(eval("[1, 2] | length", &context).expect("evaluates"), json!(2));
    }

    #[test]
    fn a_missing_name_is_an_error_at_run_time() {
        let error = render("{{ nodes.deploy.output.nope }}", &json!({"nodes": {"deploy": {"output": {}}}}))
            .expect_err("refused");
        assert!(error.contains("undefined"), "{error}");
    }

    #[test]
    fn checks_name_unknown_nodes_roots_and_syntax() {
        assert_eq!(check_expression("nodes.deplyo.output.x", &ids()), Err("there is no node `deplyo`".into()));
        assert!(check_template("{{ secrets.x }}", &ids()).expect_err("refused").contains("`secrets` is not known"));
        assert!(check_expression("nodes.deploy.output ==", &ids()).expect_err("refused").contains("syntax error"));
        assert_eq!(check_template("plain text", &ids()), Ok(()));
    }

    #[test]
    fn a_template_that_loops_forever_runs_out_of_fuel() {
        let error =
            render("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", &json!({}));
        assert!(error.is_err());
    }

    #[test]
    fn only_text_leaves_are_rendered() {
        let settings = json!({"url": "http://x/{{ trigger.id }}", "n": 3, "h": {"a": "{{ trigger.id }}"}});
        let rendered = render_leaves(&settings, &json!({"trigger": {"id": 7}})).expect("evaluates");
        assert_eq!(rendered, json!({"url": "http://x/7", "n": 3, "h": {"a": "7"}}));
    }
}
