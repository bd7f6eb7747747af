//! A model's chat template (`tokenizer_config.json`), rendered as vLLM renders it for
//! `/tokenize`: Jinja (minijinja with Python's string methods, as Hugging Face's
//! templates use them), the conversation, `add_generation_prompt`, the special tokens'
//! strings and the request's `chat_template_kwargs`.

use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind, Value as Jinja};
use serde_json::Value;

/// The template's name in the environment.
const NAME: &str = "chat";

#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

/// A special token's string in `tokenizer_config.json`: a string, or `{"content"}`.
fn token_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
        None => String::new(),
    }
}

/// Hugging Face templates call `raise_exception(msg)` to refuse a conversation.
fn raise_exception(msg: String) -> Result<Jinja, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// From `tokenizer_config.json`; None when it has no chat template.
    pub fn from_config(config: &Value) -> Result<Option<ChatTemplate>, String> {
        let source = match config.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: the one named "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .ok_or("chat_template lists no template named \"default\"")?
                .to_string(),
            _ => return Ok(None),
        };
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source)
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(Some(ChatTemplate {
            env,
            bos: token_string(config.get("bos_token")),
            eos: token_string(config.get("eos_token")),
        }))
    }

    /// The prompt text of a chat request, with the generation prompt (vLLM's default).
    pub fn render(&self, body: &Value) -> Result<String, String> {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("no messages")?;
        // Copied only when a message's content is a list of parts.
        let parts = |m: &Value| m.get("content").is_some_and(Value::is_array);
        let messages = if messages.iter().any(parts) {
            Jinja::from(Serde(messages.iter().map(text_only).collect::<Vec<_>>()))
        } else {
            Jinja::from(Serde(messages))
        };
        let kwargs = body.get("chat_template_kwargs").cloned();
        let tools = body.get("tools").cloned();
        let template = self.env.get_template(NAME).map_err(|e| e.to_string())?;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
            tools => tools.map(|t| Jinja::from(Serde(t))),
            ..Jinja::from(Serde(kwargs.unwrap_or(Value::Null)))
        };
        template
            .render(ctx)
            .map_err(|e| format!("the chat template failed: {e}"))
    }
}

/// A message whose content is a list of parts becomes its text parts joined by
/// newlines (vLLM's "string" content format for text-only templates).
fn text_only(m: &Value) -> Value {
    let Some(parts) = m.get("content").and_then(Value::as_array) else {
        return m.clone();
    };
    let text: Vec<&str> = parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    let mut m = m.clone();
    m["content"] = Value::String(text.join("\n"));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn renders_a_chat_with_the_generation_prompt_and_kwargs() {
        let cfg = json!({"chat_template": CHATML, "bos_token": {"content": "<s>"}});
        let t = ChatTemplate::from_config(&cfg).unwrap().unwrap();
        let body = json!({"messages": [
            {"role": "system", "content": " be brief "},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]});
        assert_eq!(
            t.render(&body).unwrap(),
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\na\nb<|im_end|>\n<|im_start|>assistant\n"
        );
        let py = json!({"chat_template": "{{ bos_token }}{{ messages[0].content.upper() }}{% if flag %}!{% endif %}"});
        let t = ChatTemplate::from_config(&py).unwrap().unwrap();
        let body = json!({"messages": [{"role": "user", "content": "hi"}],
                          "chat_template_kwargs": {"flag": true}});
        assert_eq!(t.render(&body).unwrap(), "HI!");
        let refuse = json!({"chat_template": "{{ raise_exception('no system role') }}"});
        let t = ChatTemplate::from_config(&refuse).unwrap().unwrap();
        assert!(t.render(&body).unwrap_err().contains("no system role"));
        assert!(ChatTemplate::from_config(&json!({})).unwrap().is_none());
    }
}
