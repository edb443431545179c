//! A JSON schema compiled into the grammar nodes the recognizer walks.
//!
//! Supported: `type` (one or a list), `properties` + `required` (keys are generated in the
//! schema's order; optional ones may be skipped; no other keys), `items`, `minItems`,
//! `maxItems`, `minLength`, `maxLength`, `enum`, `const`, `anyOf` / `oneOf` whose
//! alternatives start with different characters, `allOf` of one schema, local `$ref`s
//! (`#/$defs/…`, `#/definitions/…`, not recursive). `pattern` and `format` are refused
//! rather than ignored; numeric bounds are not enforced.
//!
//! Compiling is bounded whatever the schema: nesting (counting each `$ref` followed) stops
//! at [`MAX_NESTING`], and the number of subschemas compiled, which `$ref`s used several
//! times can multiply, at [`MAX_COMPILE_STEPS`]; both are errors, never a deep recursion.

use serde_json::{Map, Value};

pub type NodeId = u16;

/// Most object properties, enum values or union alternatives one node may have.
pub const MAX_CHOICES: usize = 64;

/// Deepest nesting of subschemas, each `$ref` followed counting as one level. Generated
/// JSON cannot nest deeper than the recognizer's 12 levels anyway.
pub const MAX_NESTING: usize = 64;

/// Most subschemas compiled for one schema (`$ref`s are expanded where they are used).
pub const MAX_COMPILE_STEPS: usize = 20_000;

/// No union alternative starts with this byte.
pub const NO_BRANCH: NodeId = NodeId::MAX;

/// Nodes every grammar has, at fixed ids.
pub const ANY: NodeId = 0;
pub const FREE_OBJECT: NodeId = 1;
pub const ANY_ARRAY: NodeId = 2;
pub const ANY_LITERAL: NodeId = 3;
pub const ANY_STRING: NodeId = 4;
pub const ANY_NUMBER: NodeId = 5;

#[derive(Debug, Clone)]
pub struct Prop {
    /// The key as JSON text, quotes included.
    pub key: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub enum Node {
    /// Any JSON value.
    Any,
    /// Declared properties in order; no properties means any keys with any values.
    Object {
        props: Vec<Prop>,
    },
    Array {
        items: NodeId,
        min: u16,
        max: u16,
    },
    String {
        min: u32,
        max: u32,
    },
    Number {
        integer: bool,
    },
    /// One of these JSON texts (enum, const, true/false/null).
    Literals(Vec<Vec<u8>>),
    /// One of these alternatives, told apart by their first character: the alternative
    /// for each possible first byte (`NO_BRANCH` for none).
    Union(Box<[NodeId; 256]>),
}

#[derive(Debug, Clone)]
pub struct JsonGrammar {
    pub(crate) nodes: Vec<Node>,
    pub(crate) root: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError(msg.into()))
}

impl JsonGrammar {
    fn base() -> JsonGrammar {
        JsonGrammar {
            nodes: vec![
                Node::Any,
                Node::Object { props: Vec::new() },
                Node::Array {
                    items: ANY,
                    min: 0,
                    max: u16::MAX,
                },
                Node::Literals(vec![b"true".to_vec(), b"false".to_vec(), b"null".to_vec()]),
                Node::String {
                    min: 0,
                    max: u32::MAX,
                },
                Node::Number { integer: false },
            ],
            root: FREE_OBJECT,
        }
    }

    /// Any JSON object (`response_format: json_object`).
    pub fn any_object() -> JsonGrammar {
        JsonGrammar::base()
    }

    /// Compiles `schema`. The root must be an object, array, string, literal or a union of
    /// them: a bare number has no end the recognizer could see.
    pub fn from_schema(schema: &Value) -> Result<JsonGrammar, SchemaError> {
        let mut g = JsonGrammar::base();
        let mut c = Compiler {
            root: schema,
            nodes: &mut g.nodes,
            refs: Vec::new(),
            depth: 0,
            steps: 0,
        };
        let root = c.compile(schema)?;
        let root = if root == ANY { FREE_OBJECT } else { root };
        if first_bytes(&g.nodes, root)
            .iter()
            .any(|&b| b == b'-' || b.is_ascii_digit())
        {
            return err("the root of the schema may not be a number");
        }
        g.root = root;
        Ok(g)
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }
}

fn first_bytes(nodes: &[Node], id: NodeId) -> Vec<u8> {
    match &nodes[id as usize] {
        Node::Any => b"{[\"-0123456789tfn".to_vec(),
        Node::Object { .. } => vec![b'{'],
        Node::Array { .. } => vec![b'['],
        Node::String { .. } => vec![b'"'],
        Node::Number { .. } => b"-0123456789".to_vec(),
        Node::Literals(l) => l.iter().filter_map(|t| t.first().copied()).collect(),
        Node::Union(branch) => (0..=255u8)
            .filter(|&b| branch[b as usize] != NO_BRANCH)
            .collect(),
    }
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: &'a mut Vec<Node>,
    /// `$ref`s being expanded (to refuse recursion).
    refs: Vec<String>,
    /// Subschemas being compiled, outermost first.
    depth: usize,
    /// Subschemas compiled so far.
    steps: usize,
}

impl Compiler<'_> {
    fn push(&mut self, node: Node) -> Result<NodeId, SchemaError> {
        if self.nodes.len() >= NodeId::MAX as usize {
            return err("the schema is too large");
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as NodeId)
    }

    /// Compiles one subschema, within the nesting and work bounds.
    fn compile(&mut self, schema: &Value) -> Result<NodeId, SchemaError> {
        self.steps += 1;
        if self.steps > MAX_COMPILE_STEPS {
            return err(format!(
                "the schema expands to more than {MAX_COMPILE_STEPS} subschemas"
            ));
        }
        if self.depth == MAX_NESTING {
            return err(format!(
                "the schema nests deeper than {MAX_NESTING} levels (counting `$ref`s)"
            ));
        }
        self.depth += 1;
        let id = self.compile_inner(schema);
        self.depth -= 1;
        id
    }

    fn compile_inner(&mut self, schema: &Value) -> Result<NodeId, SchemaError> {
        let s = match schema {
            Value::Bool(true) => return Ok(ANY),
            Value::Object(s) => s,
            _ => return err("a schema must be an object"),
        };
        for unsupported in ["pattern", "format", "patternProperties", "not", "if"] {
            if s.contains_key(unsupported) {
                return err(format!("`{unsupported}` is not supported"));
            }
        }
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            return self.reference(r);
        }
        if let Some(v) = s.get("const") {
            return self.push(Node::Literals(vec![v.to_string().into_bytes()]));
        }
        if let Some(values) = s.get("enum") {
            let values = values
                .as_array()
                .filter(|v| !v.is_empty() && v.len() <= MAX_CHOICES);
            let Some(values) = values else {
                return err(format!("`enum` must list 1 to {MAX_CHOICES} values"));
            };
            return self.push(Node::Literals(
                values.iter().map(|v| v.to_string().into_bytes()).collect(),
            ));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = s.get(key).and_then(Value::as_array) {
                let ids = alts
                    .iter()
                    .map(|a| self.compile(a))
                    .collect::<Result<Vec<_>, _>>()?;
                return self.union(ids);
            }
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            return match all.as_slice() {
                [one] => self.compile(one),
                _ => err("`allOf` with more than one schema is not supported"),
            };
        }
        match s.get("type") {
            None => {
                if s.contains_key("properties") {
                    self.typed("object", s)
                } else if s.contains_key("items") {
                    self.typed("array", s)
                } else {
                    Ok(ANY)
                }
            }
            Some(Value::String(t)) => self.typed(t, s),
            Some(Value::Array(types)) => {
                let ids = types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some(t) => self.typed(t, s),
                        None => err("`type` entries must be strings"),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.union(ids)
            }
            Some(_) => err("`type` must be a string or a list of strings"),
        }
    }

    fn reference(&mut self, r: &str) -> Result<NodeId, SchemaError> {
        let target = r
            .strip_prefix('#')
            .and_then(|p| self.root.pointer(p))
            .ok_or_else(|| SchemaError(format!("cannot resolve `$ref` {r}")))?;
        if self.refs.iter().any(|x| x == r) {
            return err(format!("recursive `$ref` {r} is not supported"));
        }
        self.refs.push(r.to_owned());
        let id = self.compile(target);
        self.refs.pop();
        id
    }

    fn union(&mut self, ids: Vec<NodeId>) -> Result<NodeId, SchemaError> {
        if ids.is_empty() || ids.len() > MAX_CHOICES {
            return err(format!("a union must have 1 to {MAX_CHOICES} alternatives"));
        }
        if let [one] = ids.as_slice() {
            return Ok(*one);
        }
        let mut branch = Box::new([NO_BRANCH; 256]);
        for &id in &ids {
            for b in first_bytes(self.nodes, id) {
                match branch[b as usize] {
                    NO_BRANCH => branch[b as usize] = id,
                    same if same == id => {}
                    _ => return err(
                        "union alternatives must start differently (e.g. string | number | null)",
                    ),
                }
            }
        }
        self.push(Node::Union(branch))
    }

    fn typed(&mut self, t: &str, s: &Map<String, Value>) -> Result<NodeId, SchemaError> {
        let uint = |key: &str| s.get(key).and_then(Value::as_u64);
        match t {
            "object" => self.object(s),
            "array" => {
                let items = match s.get("items") {
                    Some(i) => self.compile(i)?,
                    None => ANY,
                };
                let min = uint("minItems").unwrap_or(0).min(u16::MAX as u64) as u16;
                let max = uint("maxItems")
                    .unwrap_or(u16::MAX as u64)
                    .min(u16::MAX as u64) as u16;
                if min > max {
                    return err("minItems is larger than maxItems");
                }
                self.push(Node::Array { items, min, max })
            }
            "string" => {
                let min = uint("minLength").unwrap_or(0).min(u32::MAX as u64) as u32;
                let max = uint("maxLength")
                    .unwrap_or(u32::MAX as u64)
                    .min(u32::MAX as u64) as u32;
                if min > max {
                    return err("minLength is larger than maxLength");
                }
                self.push(Node::String { min, max })
            }
            "integer" => self.push(Node::Number { integer: true }),
            "number" => Ok(ANY_NUMBER),
            "boolean" => self.push(Node::Literals(vec![b"true".to_vec(), b"false".to_vec()])),
            "null" => self.push(Node::Literals(vec![b"null".to_vec()])),
            other => err(format!("unknown type `{other}`")),
        }
    }

    fn object(&mut self, s: &Map<String, Value>) -> Result<NodeId, SchemaError> {
        let Some(props) = s.get("properties").and_then(Value::as_object) else {
            return Ok(FREE_OBJECT);
        };
        if props.len() > MAX_CHOICES {
            return err(format!("at most {MAX_CHOICES} properties per object"));
        }
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
            return err(format!(
                "required property `{missing}` is not in properties"
            ));
        }
        let mut out = Vec::with_capacity(props.len());
        for (key, schema) in props {
            out.push(Prop {
                key: Value::String(key.clone()).to_string().into_bytes(),
                node: self.compile(schema)?,
                required: required.contains(&key.as_str()),
            });
        }
        self.push(Node::Object { props: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(schema: &Value) -> String {
        JsonGrammar::from_schema(schema).unwrap_err().0
    }

    /// A schema rooted at `$defs/d0` where each of `n` definitions is `wrap` of the next
    /// one's `$ref` (the last wraps `last`).
    fn ref_chain(n: usize, last: Value, wrap: impl Fn(Value) -> Value) -> Value {
        let defs: serde_json::Map<String, Value> = (0..n)
            .map(|i| {
                let next = if i + 1 < n {
                    json!({"$ref": format!("#/$defs/d{}", i + 1)})
                } else {
                    last.clone()
                };
                (format!("d{i}"), wrap(next))
            })
            .collect();
        json!({"$defs": defs, "$ref": "#/$defs/d0"})
    }

    /// A `$ref` chain far deeper than any stack would survive if followed recursively.
    #[test]
    fn a_deep_ref_chain_is_refused_not_followed() {
        let schema = ref_chain(20_000, json!({"type": "string"}), |next| next);
        assert!(error_of(&schema).contains("nests deeper"));
    }

    /// `$ref`s used twice at every level: 2^20 expansions if nothing bounded them.
    #[test]
    fn refs_that_multiply_are_refused_within_the_work_bound() {
        let schema = ref_chain(
            20,
            json!({"type": "integer"}),
            |next| json!({"type": "object", "properties": {"a": next.clone(), "b": next}}),
        );
        assert!(error_of(&schema).contains("more than"));
    }

    #[test]
    fn a_recursive_ref_is_an_error() {
        let schema = json!({
            "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
            "$ref": "#/$defs/node"
        });
        assert!(error_of(&schema).contains("recursive"));
    }
}
