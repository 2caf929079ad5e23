//! Compiles the Tailwind classes used in `src/` (plus `../style/keystone.css`) into the console's
//! stylesheet with encre-css, so the CSS always matches the markup and no Node tool is needed.

use std::path::Path;

fn rust_sources(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read app/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            println!("cargo:rerun-if-changed={}", path.display());
            out.push(std::fs::read_to_string(&path).expect("read source"));
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=../style/keystone.css");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("keystone.css");
    // The browser bundle never embeds the stylesheet; only the server build needs it.
    if std::env::var("CARGO_FEATURE_SSR").is_err() {
        std::fs::write(out, "").unwrap();
        return;
    }
    let mut sources = Vec::new();
    rust_sources(Path::new("src"), &mut sources);
    let config = encre_css::Config::default();
    let generated = encre_css::generate(sources.iter().map(String::as_str), &config);
    let extra = std::fs::read_to_string("../style/keystone.css").unwrap_or_default();
    std::fs::write(out, format!("{generated}\n{extra}")).unwrap();
}
