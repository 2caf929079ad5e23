//! Every Tailwind class used in the console must produce CSS: a typo or a class encre-css does
//! not know would otherwise fail silently in the browser.

use std::path::Path;

/// The class strings of a source file: the string after `class=` (also `class=format!(`) and the
/// shared class constants (`pub const BUTTON: &str = "..."`), which is where the app keeps every
/// class string it chooses at run time.
fn classes_in(src: &str) -> Vec<String> {
    let mut strings = Vec::new();
    for line in src.lines().map(str::trim) {
        for (i, _) in line.match_indices("class=") {
            let rest = line[i + "class=".len()..].trim_start_matches("format!(");
            if let Some(s) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                strings.push(s);
            }
        }
        if let Some(rest) = line.strip_prefix("pub const ") {
            let is_upper =
                rest.split(':').next().is_some_and(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
            if let (true, Some(s)) = (is_upper, rest.split(": &str = \"").nth(1)) {
                let s = s.split('"').next().unwrap_or_default();
                // Other string constants (session keys) are single identifiers, never utilities.
                if s.contains('-') {
                    strings.push(s);
                }
            }
        }
    }
    strings
        .into_iter()
        .flat_map(|s| s.split_whitespace())
        .filter(|t| !t.contains('{') && t.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .map(str::to_owned)
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
        }
    }
}

fn config() -> encre_css::Config {
    let mut config = encre_css::Config::default();
    config.preflight = encre_css::Preflight::new_none();
    config
}

/// Tokens in class strings that are ours, not Tailwind's: the rules live in style/keystone.css.
const OWN_CLASSES: [&str; 1] = ["diff-before"];

#[test]
fn every_class_used_in_the_app_produces_css() {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let config = config();
    let mut checked = 0;
    let mut missing = Vec::new();
    for (file, src) in &files {
        for class in classes_in(src).into_iter().filter(|c| !OWN_CLASSES.contains(&c.as_str())) {
            checked += 1;
            if encre_css::generate([class.as_str()], &config).trim().is_empty() {
                missing.push(format!("{class} ({file})"));
            }
        }
    }
    assert!(checked > 100, "the scanner found only {checked} classes: it is broken");
    assert!(missing.is_empty(), "classes without CSS: {missing:#?}");
}

#[test]
fn the_scanner_finds_classes_and_a_bogus_one_fails() {
    let found = classes_in(r#"view! { <p class="mt-1 text-sm hover:bg-slate-800 not-a-real-class">"x"</p> }"#);
    assert_eq!(found, ["mt-1", "text-sm", "hover:bg-slate-800", "not-a-real-class"]);
    assert!(encre_css::generate(["not-a-real-class"], &config()).trim().is_empty());
    assert!(!encre_css::generate(["hover:bg-slate-800"], &config()).trim().is_empty());
}

#[test]
fn the_built_stylesheet_contains_the_app_classes() {
    for needle in
        [".bg-slate-900", ".hover\\:bg-indigo-500:hover", ".focus\\:ring-2:focus", ".lg\\:grid-cols-2", ".diff-before"]
    {
        assert!(app::STYLESHEET.contains(needle), "stylesheet lacks {needle}");
    }
}
