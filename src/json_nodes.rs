//! How many values a JSON text holds, counted without parsing it, so that a reader can refuse a
//! text whose decoded tree would be out of proportion to its size (16 MiB of `0,` is eight million
//! values) before building anything. Config files and `Manifest.json` both use it.

/// Whether JSON `bytes` holds more than `max` nodes, counted in one pass that stops past `max`.
///
/// Every node but the first is preceded by its own `[`, `{`, `,` or `:` outside strings (a key by
/// `{` or `,`, a value by `:`, a list item by `[` or `,`), so one more than the count of those is
/// at least the number of nodes, and equal to it but for empty collections (each counted as if it
/// held one). Text that is not JSON is counted all the same and left to the parser to name.
pub(crate) fn more_json_nodes_than(bytes: &[u8], max: usize) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    // The root, which nothing precedes.
    let mut nodes = 1usize;
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' | b',' | b':' => {
                nodes += 1;
                if nodes > max {
                    return true;
                }
            }
            _ => {}
        }
    }
    nodes > max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_inside_strings_are_not_counted() {
        // Object, "a,b:[{" key, value string, "c" key, list, 1, {}: 7 nodes, and the empty
        // object counted as holding one.
        let text = br#"{"a,b:[{": "\",", "c": [1, {}]}"#;
        assert!(!more_json_nodes_than(text, 8));
        assert!(more_json_nodes_than(text, 7));
        assert!(!more_json_nodes_than(b"0", 1));
        assert!(more_json_nodes_than(b"0", 0));
    }
}
