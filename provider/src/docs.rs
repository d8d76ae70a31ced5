//! Registry-format documentation, generated from the schemas (a test fails
//! when the committed files under `docs/` are stale).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::config;
use crate::protocol::schema::{Block, Presence, Schema};
use crate::resources::topology;

/// One page: where it goes and what it says.
pub struct Page {
    pub path: &'static str,
    pub text: String,
}

pub fn pages() -> Vec<Page> {
    vec![
        Page {
            path: "index.md",
            text: page(
                "merak Provider",
                "",
                &config::SCHEMA,
                include_str!("../../examples/terraform/resources/provider.tf"),
                None,
            ),
        },
        Page {
            path: "resources/topology.md",
            text: page(
                topology::TYPE_NAME,
                " Resource - terraform-provider-merak",
                &topology::SCHEMA,
                include_str!("../../examples/terraform/resources/merak_topology.tf"),
                Some("The import ID is the topology's `name`; the runtime must hold a topology of that name.\n\n```shell\nterraform import merak_topology.lab lab\n```\n"),
            ),
        },
    ]
}

pub fn write_all(dir: &Path) -> anyhow::Result<()> {
    for page in pages() {
        let path = dir.join(page.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, page.text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn page(title: &str, title_suffix: &str, schema: &Schema, example: &str, import: Option<&str>) -> String {
    let block = &schema.block;
    let kind = if title_suffix.is_empty() { "" } else { " (Resource)" };
    let mut out = String::new();
    let _ = writeln!(out, "---\npage_title: \"{title}{title_suffix}\"\nsubcategory: \"\"\ndescription: |-\n  {}\n---\n", first_sentence(block.description));
    let _ = writeln!(out, "# {title}{kind}\n\n{}\n", block.description);
    let _ = writeln!(out, "## Example Usage\n\n```terraform\n{}```\n", example);
    let _ = writeln!(out, "## Schema\n");
    write_block(&mut out, block, "");
    if let Some(import) = import {
        let _ = writeln!(out, "## Import\n\n{import}");
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn write_block(out: &mut String, block: &Block, anchor: &str) {
    let sections = [
        ("Required", &[Presence::Required][..]),
        ("Optional", &[Presence::Optional, Presence::OptionalComputed][..]),
        ("Read-Only", &[Presence::Computed][..]),
    ];
    for (heading, presences) in sections {
        let attributes: Vec<_> = block.attributes.iter().filter(|a| presences.contains(&a.presence)).collect();
        let blocks: Vec<_> = if heading == "Optional" { block.blocks.iter().collect() } else { Vec::new() };
        if attributes.is_empty() && blocks.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### {heading}{anchor}\n");
        for attribute in attributes {
            let _ = writeln!(out, "- `{}` ({}) {}", attribute.name, attribute.ty.friendly_name(), attribute.description);
        }
        for nested in &blocks {
            let _ = writeln!(out, "- `{}` (Block, at most one) {} (see [below for nested schema](#nestedblock--{}))", nested.name, nested.block.description, nested.name);
        }
        out.push('\n');
    }
    for nested in &block.blocks {
        let _ = writeln!(out, "<a id=\"nestedblock--{}\"></a>\n### Nested Schema for `{}`\n", nested.name, nested.name);
        write_block(out, &nested.block, &format!(" in `{}`", nested.name));
    }
}

fn first_sentence(text: &str) -> &str {
    text.split_once(". ").map(|(first, _)| first).unwrap_or(text).trim_end_matches('.')
}
