//! A bound on how many nodes a config may hold, the same for JSON and YAML, checked before any
//! tree is built.
//!
//! The 16 MiB cap on the file (`super::source`) does not bound memory by itself: 16 MiB of `0,`
//! is eight million values, and building them (serde_json's tree, or serde_norway's event list and
//! then ours for YAML) peaked at 0.87 GB for JSON and 1.14 GB for YAML before the config was
//! refused, and aborted under a 700 MB address-space limit. coremltools' configs hold a few hundred
//! entries of two to ten nodes each; [`MAX_CONFIG_NODES`] is three orders of magnitude above that
//! and keeps the largest accepted config well under 128 MiB once parsed.

/// Most nodes a config may hold: every mapping, list, key, value and list item counts as one (a
/// YAML alias counts as one here; what aliases expand to is bounded by
/// [`super::bounded_yaml::MAX_EXPANDED_BYTES`]).
pub const MAX_CONFIG_NODES: usize = 250_000;

/// The refusal, the same for JSON and YAML.
pub(crate) fn too_many_nodes(max: usize) -> String {
    format!(
        "it holds more than {max} nodes (mappings, lists, keys, values); a coremltools config \
         holds hundreds, refusing it before building them"
    )
}

/// Refuses JSON `text` of more than `max` nodes, counted in one pass without building anything
/// (see [`crate::json_nodes::more_json_nodes_than`]). Text that is not JSON is left to serde_json,
/// which names the error.
pub(crate) fn check_json_nodes(text: &str, max: usize) -> Result<(), String> {
    if crate::json_nodes::more_json_nodes_than(text.as_bytes(), max) {
        return Err(too_many_nodes(max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes serde_json builds: the bound the pre-scan must never fall below.
    fn json_nodes(v: &serde_json::Value) -> usize {
        use serde_json::Value as J;
        1 + match v {
            J::Array(items) => items.iter().map(json_nodes).sum(),
            J::Object(m) => m.values().map(|v| 1 + json_nodes(v)).sum(),
            _ => 0,
        }
    }

    #[test]
    fn json_count_is_exact_without_empty_collections() {
        for text in [
            "0",
            "[0, 1, [2, 3]]",
            r#"{"a": {"b": [1, "x,:[{\"]"]}, "c": null}"#,
            r#"{"config_type": "OpMagnitudePrunerConfig", "global_config": {"target_sparsity": 0.5}}"#,
        ] {
            let n = json_nodes(&serde_json::from_str(text).unwrap());
            assert!(check_json_nodes(text, n).is_ok(), "{text}: {n}");
            let err = check_json_nodes(text, n - 1).unwrap_err();
            assert!(err.contains(&format!("more than {} nodes", n - 1)), "{err}");
        }
        // Empty collections are counted as if they held one node: never fewer than there are.
        assert!(check_json_nodes("[[], {}]", 5).is_ok());
        assert!(check_json_nodes("[[], {}]", 4).is_err());
    }
}
