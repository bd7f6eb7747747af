//! A model's chat template (`tokenizer_config.json`), rendered as vLLM renders it for
//! `/tokenize`: Jinja (minijinja with Python's string methods, as Hugging Face's
//! templates use them), the conversation, `add_generation_prompt`, the special tokens'
//! strings and the request's `chat_template_kwargs`.

use crate::prehashed::PrehashedMap;
use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind, Value as Jinja};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

/// Text the converted-message cache holds at most; past it, it starts over.
const MAX_CACHED_MESSAGE_BYTES: usize = 8 << 20;

/// Messages already converted to the template's values, by a hash of their JSON: a
/// conversation's turn n+1 resends turns 1..n, and converting them again (a string
/// allocated per field) was a quarter of rendering a 4k-token chat.
#[derive(Default)]
pub struct MessageValues {
    by_hash: PrehashedMap<Jinja>,
    bytes: usize,
}

impl MessageValues {
    fn get(&mut self, m: &Value) -> Jinja {
        let mut size = 0;
        let key = hash_json(m, 0, &mut size);
        if let Some(v) = self.by_hash.get(&key) {
            return v.clone();
        }
        let v = if m.get("content").is_some_and(Value::is_array) {
            Jinja::from(Serde(text_only(m)))
        } else {
            Jinja::from(Serde(m))
        };
        if self.bytes + size > MAX_CACHED_MESSAGE_BYTES {
            self.by_hash.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.by_hash.insert(key, v.clone());
        v
    }
}

/// A hash of a JSON value's content (keys in the map's order), adding its string
/// bytes to `size`: each string's xxh3, folded in with a tag per kind of value.
fn hash_json(v: &Value, h: u64, size: &mut usize) -> u64 {
    let fold = |h: u64, tag: u64, x: u64| (h.rotate_left(23) ^ tag ^ x).wrapping_mul(K);
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    match v {
        Value::Null => fold(h, 0, 0),
        Value::Bool(b) => fold(h, 1, u64::from(*b)),
        Value::Number(n) => fold(h, 2, xxh3_64(n.to_string().as_bytes())),
        Value::String(s) => {
            *size += s.len();
            fold(h, 3, xxh3_64(s.as_bytes()))
        }
        Value::Array(a) => {
            let h = (a.iter()).fold(fold(h, 4, 0), |h, x| hash_json(x, h, size));
            fold(h, 5, a.len() as u64)
        }
        Value::Object(o) => {
            let h = (o.iter()).fold(fold(h, 6, 0), |h, (k, x)| {
                *size += k.len();
                hash_json(x, fold(h, 7, xxh3_64(k.as_bytes())), size)
            });
            fold(h, 8, o.len() as u64)
        }
    }
}

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

    /// The prompt text of a chat request, with the generation prompt (vLLM's default);
    /// messages converted before come from `known`.
    pub fn render(&self, body: &Value, known: &mut MessageValues) -> Result<String, String> {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("no messages")?;
        let messages = Jinja::from(messages.iter().map(|m| known.get(m)).collect::<Vec<_>>());
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
        let mut known = MessageValues::default();
        let want = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\na\nb<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(t.render(&body, &mut known).unwrap(), want);
        assert_eq!(known.by_hash.len(), 2);
        assert_eq!(
            t.render(&body, &mut known).unwrap(),
            want,
            "converted before"
        );
        // Another content is another message.
        let other = json!({"messages": [{"role": "system", "content": " be long "}]});
        assert!(t.render(&other, &mut known).unwrap().contains("be long"));
        assert_eq!(known.by_hash.len(), 3);
        let py = json!({"chat_template": "{{ bos_token }}{{ messages[0].content.upper() }}{% if flag %}!{% endif %}"});
        let t = ChatTemplate::from_config(&py).unwrap().unwrap();
        let body = json!({"messages": [{"role": "user", "content": "hi"}],
                          "chat_template_kwargs": {"flag": true}});
        assert_eq!(t.render(&body, &mut known).unwrap(), "HI!");
        let refuse = json!({"chat_template": "{{ raise_exception('no system role') }}"});
        let t = ChatTemplate::from_config(&refuse).unwrap().unwrap();
        assert!(t
            .render(&body, &mut known)
            .unwrap_err()
            .contains("no system role"));
        assert!(ChatTemplate::from_config(&json!({})).unwrap().is_none());
    }
}
