//! Which fields of `event` a route filter (CEL) reads: used by the declaration checks (every
//! field must exist in the stream's schema) and by jobs (only those fields are converted to CEL
//! values per event). Pure, so the browser bundle and the data plane share it.

/// What a CEL filter reads of `event`: the dotted field paths (`event.user.tier` -> `user.tier`),
/// and whether it also uses `event` some other way (`event["x"]`, `size(event)`), which the
/// schema check cannot follow and the filter must see whole. A light scan outside string literals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventReferences {
    pub paths: Vec<String>,
    pub whole_event: bool,
}

/// The event fields a CEL filter reads, as dotted paths (see [`event_references`]).
pub fn filter_fields(expr: &str) -> Vec<String> {
    event_references(expr).paths
}

pub fn event_references(expr: &str) -> EventReferences {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut whole_event = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        let starts_word = i == 0 || !(ident(chars[i - 1]) || chars[i - 1] == '.');
        let is_event = starts_word
            && chars[i..].starts_with(&['e', 'v', 'e', 'n', 't'])
            && !chars.get(i + 5).copied().is_some_and(ident);
        if is_event && !(chars.get(i + 5) == Some(&'.') && chars.get(i + 6).copied().is_some_and(ident)) {
            whole_event = true;
            i += 5;
            continue;
        }
        if is_event {
            let mut j = i + 6;
            let mut segs = Vec::new();
            loop {
                let start = j;
                while j < chars.len() && ident(chars[j]) {
                    j += 1;
                }
                if start == j {
                    break;
                }
                segs.push(chars[start..j].iter().collect::<String>());
                // A call such as `event.items.size()` ends the path before the function name.
                if j < chars.len() && chars[j] == '(' {
                    segs.pop();
                    break;
                }
                if j + 1 < chars.len() && chars[j] == '.' && ident(chars[j + 1]) {
                    j += 1;
                } else {
                    break;
                }
            }
            if !segs.is_empty() {
                out.push(segs.join("."));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    EventReferences { paths: out, whole_event }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_fields_are_found_outside_strings() {
        assert_eq!(
            filter_fields(r#"event.country == "event.fake" && event.user.tier in ['a'] && size(event.items) > 0"#),
            ["country", "items", "user.tier"]
        );
        assert_eq!(filter_fields("event.tags.exists(t, t == 'x') && myevent.x == 1"), ["tags"]);
    }

    #[test]
    fn other_uses_of_event_are_flagged() {
        assert!(!event_references("event.a > 1 && has(event.b)").whole_event);
        assert!(event_references("size(event) > 2").whole_event);
        assert!(event_references(r#"event["country"] == "BR""#).whole_event);
        assert!(!event_references("events_seen > 1 || myevent.x").whole_event);
    }
}
