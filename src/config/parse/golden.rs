//! Parity with coremltools 9.0 on the cases of `tests/python/config_cases.py`, whose results are
//! committed in `tests/golden/config_cases.json` (regenerate with that script).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{from_json_str, from_yaml_str};
use crate::config::{OpConfig, OptimizationConfig};
use crate::Error;

const GOLDEN: &str = include_str!("../../../tests/golden/config_cases.json");

/// Python exceptions whose text is a message meant for users, which we reproduce.
const MESSAGE_TYPES: [&str; 2] = ["ValueError", "ForbiddenExtraKeysError"];

fn run(case: &Value) -> crate::Result<OptimizationConfig> {
    if let Some(yaml) = case.get("yaml").and_then(Value::as_str) {
        from_yaml_str(yaml)
    } else {
        let json = case.get("json").expect("case has json or yaml");
        from_json_str(&json.to_string())
    }
}

fn describe(c: &Option<OpConfig>) -> Value {
    c.as_ref().map_or(Value::Null, |c| Value::String(c.describe()))
}

fn level(map: &BTreeMap<String, Option<OpConfig>>) -> BTreeMap<String, Value> {
    map.iter().map(|(k, v)| (k.clone(), describe(v))).collect()
}

fn golden_level(v: &Value) -> BTreeMap<String, Value> {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Compare one case with coremltools' result; `None` when they agree.
fn check(case: &Value) -> Option<String> {
    let name = case["name"].as_str().unwrap_or("?");
    let ct_accepts = case["accepted"].as_bool().unwrap_or(false);
    let ours = run(case);

    if case.get("divergence").is_some() {
        // Deliberate: coremltools accepts, mlprune refuses (see validate.rs).
        return match (&ours, ct_accepts) {
            (Err(Error::Config(_)), true) => None,
            _ => Some(format!(
                "{name}: expected a deliberate rejection, coremltools accepted={ct_accepts}, ours={ours:?}"
            )),
        };
    }
    match ours {
        Ok(cfg) if ct_accepts => {
            if case.get("repr_differs").is_some() {
                return None;
            }
            let want = (
                case["global"].clone(),
                golden_level(&case["op_type"]),
                golden_level(&case["op_name"]),
            );
            let got = (describe(&cfg.global), level(&cfg.op_type), level(&cfg.op_name));
            (want != got).then(|| format!("{name}: coremltools has {want:?}, we have {got:?}"))
        }
        Ok(cfg) => Some(format!(
            "{name}: coremltools rejects ({}), we accept {cfg:?}",
            case["message"]
        )),
        Err(e) if ct_accepts => Some(format!("{name}: coremltools accepts, we reject: {e}")),
        Err(Error::Config(msg)) => {
            let ct_type = case["error_type"].as_str().unwrap_or("");
            let ct_msg = case["message"].as_str().unwrap_or("");
            let check_message = MESSAGE_TYPES.contains(&ct_type) && case.get("message_differs").is_none();
            (check_message && !msg.contains(ct_msg))
                .then(|| format!("{name}: message {msg:?} lacks {ct_msg:?}"))
        }
        Err(other) => Some(format!("{name}: not a config error: {other}")),
    }
}

#[test]
fn parser_matches_coremltools_on_golden_cases() {
    let golden: Value = serde_json::from_str(GOLDEN).expect("golden file is JSON");
    assert_eq!(golden["coremltools"], "9.0");
    let cases = golden["cases"].as_array().expect("cases array");
    assert!(cases.len() > 100, "golden file looks truncated");
    let failures: Vec<String> = cases.iter().filter_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_covers_both_outcomes_and_the_divergences() {
    let golden: Value = serde_json::from_str(GOLDEN).expect("golden file is JSON");
    let cases = golden["cases"].as_array().expect("cases array");
    let accepted = cases.iter().filter(|c| c["accepted"] == true).count();
    let divergent = cases.iter().filter(|c| c.get("divergence").is_some()).count();
    assert!(
        accepted > 30 && cases.len() - accepted > 30,
        "accepted {accepted} of {}",
        cases.len()
    );
    assert_eq!(
        divergent, 8,
        "divergences are listed in validate.rs; update both together"
    );
}
