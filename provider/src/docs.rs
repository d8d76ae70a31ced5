//! Registry-format documentation, generated from the schemas (a test fails
//! when the committed files under `docs/` are stale).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::config;
use crate::resources;
use merak_tfplugin::schema::{Block, Nesting, Presence, Schema};

/// One page: where it goes and what it says.
pub struct Page {
    pub path: String,
    pub text: String,
}

/// Per resource: its example (a file under examples/terraform/resources,
/// applied together with the others by an acceptance test) and its import ID.
const RESOURCE_DOCS: &[(&str, &str, &str)] = &[
    (
        "merak_topology",
        include_str!("../../examples/terraform/resources/merak_topology.tf"),
        "the topology's `name`, e.g. `lab`",
    ),
    (
        "merak_vpc",
        include_str!("../../examples/terraform/resources/merak_vpc.tf"),
        "`<topology>/<vpc>`, e.g. `lab/blue`",
    ),
    (
        "merak_subnet",
        include_str!("../../examples/terraform/resources/merak_subnet.tf"),
        "`<topology>/<vpc>/<subnet>`, e.g. `lab/blue/web`",
    ),
    (
        "merak_security_group",
        include_str!("../../examples/terraform/resources/merak_security_group.tf"),
        "`<topology>/<vpc>/<name>`, e.g. `lab/blue/web`",
    ),
    (
        "merak_evm_group",
        include_str!("../../examples/terraform/resources/merak_evm_group.tf"),
        "`<topology>/<vpc>/<subnet>/<group>`, e.g. `lab/blue/web/web`",
    ),
    (
        "merak_fault",
        include_str!("../../examples/terraform/resources/merak_fault.tf"),
        "`<topology>/<fault>`, e.g. `lab/rack-1-cut-off` (imported, its links are listed in `links`)",
    ),
];

const DATA_SOURCE_DOCS: &[(&str, &str)] = &[
    ("merak_evms", include_str!("../../examples/terraform/resources/data_merak_evms.tf")),
    ("merak_pingall", include_str!("../../examples/terraform/resources/data_merak_pingall.tf")),
    ("merak_topology_graph", include_str!("../../examples/terraform/resources/data_merak_topology_graph.tf")),
];

pub fn pages() -> Vec<Page> {
    let mut pages = vec![Page {
        path: "index.md".into(),
        text: page(
            "merak Provider",
            "",
            &config::SCHEMA,
            include_str!("../../examples/terraform/resources/provider.tf"),
            None,
        ),
    }];
    for resource in resources::RESOURCES {
        let name = resource.type_name();
        let Some((_, example, import_id)) = RESOURCE_DOCS.iter().find(|(n, _, _)| *n == name) else { continue };
        let address = format!("{name}.example");
        let import = format!(
            "The import ID is {import_id}; the runtime must hold it.\n\n```shell\nterraform import {address} <id>\n```\n"
        );
        pages.push(Page {
            path: format!("resources/{}.md", name.trim_start_matches("merak_")),
            text: page(name, " Resource - terraform-provider-merak", resource.schema(), example, Some(&import)),
        });
    }
    for source in resources::DATA_SOURCES {
        let name = source.type_name();
        let Some((_, example)) = DATA_SOURCE_DOCS.iter().find(|(n, _)| *n == name) else { continue };
        pages.push(Page {
            path: format!("data-sources/{}.md", name.trim_start_matches("merak_")),
            text: page(name, " Data Source - terraform-provider-merak", source.schema(), example, None),
        });
    }
    pages.push(Page { path: "controller-api.md".into(), text: crate::controller::port_api::reference() });
    pages
}

pub fn write_all(dir: &Path) -> anyhow::Result<()> {
    for page in pages() {
        let path = dir.join(&page.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, page.text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn page(title: &str, title_suffix: &str, schema: &Schema, example: &str, import: Option<&str>) -> String {
    let block = &schema.block;
    let kind = match title_suffix {
        "" => "",
        suffix if suffix.contains("Data Source") => " (Data Source)",
        _ => " (Resource)",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---\npage_title: \"{title}{title_suffix}\"\nsubcategory: \"\"\ndescription: |-\n  {}\n---\n",
        first_sentence(block.description)
    );
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
            let _ =
                writeln!(out, "- `{}` ({}) {}", attribute.name, attribute.ty.friendly_name(), attribute.description);
        }
        for nested in &blocks {
            let how_many = match nested.nesting {
                Nesting::Single => "Block, at most one",
                Nesting::List => "Block List",
            };
            let _ = writeln!(
                out,
                "- `{}` ({how_many}) {} (see [below for nested schema](#nestedblock--{}))",
                nested.name, nested.block.description, nested.name
            );
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
