//! The rules a route filter must meet at declaration: it compiles (errors with line and
//! column), reads only `event`, and its cost per event is bounded.

/// Longest filter accepted, in bytes: with comprehensions never nested (below), a filter's cost
/// per event is bounded by its size.
pub const FILTER_MAX_BYTES: usize = 4096;
/// CEL's comprehension macros: each runs its body once per element of a list or map.
const COMPREHENSIONS: [&str; 5] = ["all", "exists", "exists_one", "map", "filter"];

/// How deeply comprehension macros nest in a CEL expression (string literals skipped): a
/// comprehension inside another multiplies their costs, which is how a filter takes seconds.
fn comprehension_depth(expr: &str) -> usize {
    let bytes = expr.as_bytes();
    // Per open parenthesis: whether it opened a comprehension.
    let mut open: Vec<bool> = Vec::new();
    let (mut deepest, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' => {
                let before = expr[..i].trim_end();
                let name_start = before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |p| p + 1);
                let is_macro =
                    before[..name_start].trim_end().ends_with('.') && COMPREHENSIONS.contains(&&before[name_start..]);
                open.push(is_macro);
                deepest = deepest.max(open.iter().filter(|m| **m).count());
            }
            b')' => {
                open.pop();
            }
            _ => {}
        }
        i += 1;
    }
    deepest
}

pub fn check_filter(expr: &str) -> Result<(), String> {
    if expr.len() > FILTER_MAX_BYTES {
        return Err(format!("is {} bytes long; at most {FILTER_MAX_BYTES}", expr.len()));
    }
    if comprehension_depth(expr) > 1 {
        return Err("nests a comprehension (all, exists, exists_one, map, filter) inside another: \
                    its cost per event would multiply; use one at a time"
            .into());
    }
    let program = cel::Program::compile(expr).map_err(|e| {
        let first = e.errors.first();
        match first {
            Some(p) => format!("syntax error at line {}, column {}: {}", p.pos.0, p.pos.1 + 1, p.msg),
            None => e.to_string(),
        }
    })?;
    let refs = program.references();
    let unknown: Vec<&str> = refs.variables().into_iter().filter(|v| *v != "event").collect();
    if !unknown.is_empty() {
        return Err(format!("unknown variable {}; fields are read as event.<field>", unknown.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costly_filters_are_refused_at_declaration() {
        assert_eq!(comprehension_depth("event.tags.exists(t, t == \"a\") && event.ids.all(i, i > 0)"), 1);
        // Naming the iteration variable `event` passes the variable check: only the depth stops it.
        let nested = "[1,2,3].all(event, [4,5,6].exists(event, event > 0))";
        assert!(check_filter(nested).unwrap_err().contains("nests a comprehension"));
        assert!(check_filter("[1,2,3].all(event, event > 0)").is_ok());
        let nested_spaced = "event.a.map(x, event.b . filter (y, y > x))";
        assert!(check_filter(nested_spaced).is_err());
        assert!(check_filter("event.s == \".map(x, [].all(y, y))\"").is_ok(), "text in a string is not code");
        let long = format!("event.n == 1{}", " || event.n == 1".repeat(300));
        assert!(check_filter(&long).unwrap_err().contains("at most 4096"));
    }

    #[test]
    fn filter_errors_carry_their_position() {
        assert!(check_filter(r#"event.country == "BR" && event.bitrate > 3000"#).is_ok());
        let e = check_filter("event.country == ").unwrap_err();
        assert!(e.contains("syntax error at line 1"), "{e}");
        let e = check_filter("country == 'BR'").unwrap_err();
        assert!(e.contains("unknown variable country"), "{e}");
    }
}
