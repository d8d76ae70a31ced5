//! The registry docs under `docs/` are generated from the schemas; this fails
//! when they are stale. Regenerate with `make docs`.

#[test]
fn committed_docs_match_the_schema() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    for page in merak_provider::docs::pages() {
        let path = docs.join(&page.path);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == page.text, "{} is stale: run `make docs` and commit the result", path.display());
    }
}
