//! Schemas, declared once in Rust: they become the tfplugin6 schema Terraform
//! reads, the cty type values are decoded with, and the registry docs.

use merak_proto::tfplugin6 as pb;

use super::cty::Type;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
    Computed,
    OptionalComputed,
}

#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: &'static str,
    pub ty: Type,
    pub description: &'static str,
    pub presence: Presence,
    /// Changing it destroys and recreates the resource.
    pub forces_replacement: bool,
    /// Terraform hides its value in plans and output (e.g. credentials).
    pub sensitive: bool,
}

impl Attribute {
    fn new(name: &'static str, ty: Type, presence: Presence, description: &'static str) -> Self {
        Attribute { name, ty, description, presence, forces_replacement: false, sensitive: false }
    }

    pub fn required(name: &'static str, ty: Type, description: &'static str) -> Self {
        Self::new(name, ty, Presence::Required, description)
    }

    pub fn optional(name: &'static str, ty: Type, description: &'static str) -> Self {
        Self::new(name, ty, Presence::Optional, description)
    }

    pub fn computed(name: &'static str, ty: Type, description: &'static str) -> Self {
        Self::new(name, ty, Presence::Computed, description)
    }

    /// Optional; when left out, the provider chooses the value.
    pub fn optional_computed(name: &'static str, ty: Type, description: &'static str) -> Self {
        Self::new(name, ty, Presence::OptionalComputed, description)
    }

    pub fn forces_replacement(mut self) -> Self {
        self.forces_replacement = true;
        self
    }

    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    fn to_proto(&self) -> pb::schema::Attribute {
        pb::schema::Attribute {
            name: self.name.to_string(),
            r#type: self.ty.to_json().to_string().into_bytes(),
            description: self.description.to_string(),
            description_kind: pb::StringKind::Markdown as i32,
            required: self.presence == Presence::Required,
            optional: matches!(self.presence, Presence::Optional | Presence::OptionalComputed),
            computed: matches!(self.presence, Presence::Computed | Presence::OptionalComputed),
            sensitive: self.sensitive,
            ..Default::default()
        }
    }
}

/// How many of a nested block a configuration may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nesting {
    /// At most one, `local { ... }`: its value is an object, or null.
    #[default]
    Single,
    /// Any number, `epm_agent { ... }` repeated: a list of objects, empty when none.
    List,
}

/// A nested block.
#[derive(Debug, Clone)]
pub struct NestedBlock {
    pub name: &'static str,
    pub block: Block,
    pub nesting: Nesting,
}

impl NestedBlock {
    pub fn single(name: &'static str, block: Block) -> Self {
        NestedBlock { name, block, nesting: Nesting::Single }
    }

    pub fn list(name: &'static str, block: Block) -> Self {
        NestedBlock { name, block, nesting: Nesting::List }
    }

    fn value_type(&self) -> Type {
        match self.nesting {
            Nesting::Single => self.block.value_type(),
            Nesting::List => Type::list(self.block.value_type()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Block {
    pub description: &'static str,
    pub attributes: Vec<Attribute>,
    pub blocks: Vec<NestedBlock>,
}

impl Block {
    /// The object type of a value of this block.
    pub fn value_type(&self) -> Type {
        let attributes = self.attributes.iter().map(|a| (a.name, a.ty.clone()));
        let blocks = self.blocks.iter().map(|b| (b.name, b.value_type()));
        Type::object(attributes.chain(blocks))
    }

    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    fn to_proto(&self) -> pb::schema::Block {
        pb::schema::Block {
            version: 0,
            attributes: self.attributes.iter().map(Attribute::to_proto).collect(),
            block_types: self
                .blocks
                .iter()
                .map(|nested| pb::schema::NestedBlock {
                    type_name: nested.name.to_string(),
                    block: Some(nested.block.to_proto()),
                    nesting: match nested.nesting {
                        Nesting::Single => pb::schema::nested_block::NestingMode::Single,
                        Nesting::List => pb::schema::nested_block::NestingMode::List,
                    } as i32,
                    min_items: 0,
                    max_items: if nested.nesting == Nesting::Single { 1 } else { 0 },
                })
                .collect(),
            description: self.description.to_string(),
            description_kind: pb::StringKind::Markdown as i32,
            deprecated: false,
        }
    }
}

/// A versioned schema of a provider, resource or data source.
#[derive(Debug, Clone)]
pub struct Schema {
    pub version: i64,
    pub block: Block,
}

impl Schema {
    pub fn to_proto(&self) -> pb::Schema {
        pb::Schema { version: self.version, block: Some(self.block.to_proto()) }
    }

    pub fn value_type(&self) -> Type {
        self.block.value_type()
    }
}
