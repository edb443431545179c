//! `tools` / `tool_choice` and `response_format`: which tools the template sees, how the
//! output is parsed, and the JSON grammar that constrained decoding enforces.

use std::sync::Arc;

use serde_json::{json, Value};
use weft_engine::constrained::{JsonConstraint, JsonGrammar};

use crate::error::ApiError;
use crate::generate::ConstraintFactory;
use crate::shaper::ToolMode;
use crate::state::PromptContext;

/// The tools of a chat request, checked.
pub struct Tools {
    pub mode: ToolMode,
    /// Tools given to the template (none for `tool_choice: none`).
    pub render: Option<Vec<Value>>,
    /// Grammar of the forced call.
    grammar: Option<JsonGrammar>,
}

fn function_name(tool: &Value) -> Option<&str> {
    tool.pointer("/function/name").and_then(Value::as_str)
}

impl Tools {
    pub fn from_request(
        tools: Option<&[Value]>,
        choice: Option<&Value>,
    ) -> Result<Tools, ApiError> {
        let tools = tools.unwrap_or_default();
        for (i, t) in tools.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function")
                || function_name(t).is_none()
            {
                return Err(ApiError::invalid(
                    "tools",
                    format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"),
                ));
            }
        }
        let off = Tools {
            mode: ToolMode::Off,
            render: None,
            grammar: None,
        };
        let choice = match choice {
            None if tools.is_empty() => return Ok(off),
            None => "auto".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) => format!("function:{name}"),
                None => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ))
                }
            },
        };
        if tools.is_empty() && choice != "none" {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice is only allowed when tools are given",
            ));
        }
        let rendered = Some(tools.to_vec());
        match choice.as_str() {
            "none" => Ok(off),
            "auto" => Ok(Tools {
                mode: ToolMode::Auto,
                render: rendered,
                grammar: None,
            }),
            "required" => {
                let names: Vec<&str> = tools.iter().filter_map(function_name).collect();
                // One tool: its own parameters; several: the name decides, any arguments.
                let arguments = match tools {
                    [only] => parameters(only),
                    _ => json!({"type": "object"}),
                };
                let schema = call_schema(json!({"enum": names}), arguments);
                Ok(Tools {
                    mode: ToolMode::Required,
                    render: rendered,
                    grammar: Some(compile(&schema, "tools")?),
                })
            }
            other => {
                let name = other.strip_prefix("function:").ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice",
                        format!(
                            "tool_choice must be none, auto, required or a function, got `{other}`"
                        ),
                    )
                })?;
                let tool = tools
                    .iter()
                    .find(|t| function_name(t) == Some(name))
                    .ok_or_else(|| {
                        ApiError::invalid("tool_choice", format!("no tool named `{name}` in tools"))
                    })?;
                Ok(Tools {
                    mode: ToolMode::Named(name.to_owned()),
                    render: rendered,
                    grammar: Some(compile(&parameters(tool), "tools")?),
                })
            }
        }
    }
}

fn parameters(tool: &Value) -> Value {
    tool.pointer("/function/parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}))
}

fn call_schema(name: Value, arguments: Value) -> Value {
    json!({
        "type": "object",
        "properties": {"name": name, "arguments": arguments},
        "required": ["name", "arguments"],
    })
}

fn compile(schema: &Value, param: &str) -> Result<JsonGrammar, ApiError> {
    JsonGrammar::from_schema(schema)
        .map_err(|e| ApiError::invalid(param, format!("unsupported JSON schema: {e}")))
}

/// The grammar `response_format` asks for: `text` (none), `json_object`, `json_schema`.
pub fn response_format(format: Option<&Value>) -> Result<Option<JsonGrammar>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(JsonGrammar::any_object())),
        Some("json_schema") => {
            let schema = format.pointer("/json_schema/schema").ok_or_else(|| {
                ApiError::invalid(
                    "response_format",
                    "response_format.json_schema.schema is missing",
                )
            })?;
            compile(schema, "response_format").map(Some)
        }
        _ => Err(ApiError::invalid(
            "response_format",
            "response_format.type must be text, json_object or json_schema",
        )),
    }
}

/// A forced tool call wins over `response_format` (as in vLLM).
pub fn constraint(
    ctx: &PromptContext,
    tools: Option<Tools>,
    format: Option<&Value>,
) -> Result<Option<ConstraintFactory>, ApiError> {
    let grammar = match tools.and_then(|t| t.grammar) {
        Some(g) => Some(g),
        None => response_format(format)?,
    };
    Ok(grammar.map(|g| {
        let grammar = Arc::new(g);
        let vocab = ctx.vocab_index();
        Box::new(move || {
            Box::new(JsonConstraint::new(
                Arc::clone(&grammar),
                Arc::clone(&vocab),
            )) as Box<dyn weft_engine::generation::TokenConstraint>
        }) as ConstraintFactory
    }))
}
