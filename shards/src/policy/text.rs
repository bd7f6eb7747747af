//! The request text a policy keys on: the whole conversation (every message with its
//! role) or the prompt, read from the parsed JSON body.

use serde_json::Value;

/// Where the text goes, piece by piece: a `String` (cache_aware keeps it) or a list of
/// borrowed pieces (consistent_hash only hashes parts of it, so nothing is copied).
pub trait TextSink<'a> {
    fn push_str(&mut self, s: &'a str);
    /// A piece that does not live in the body (a number rendered as text).
    fn push_owned(&mut self, s: String);
}

impl<'a> TextSink<'a> for String {
    fn push_str(&mut self, s: &'a str) {
        String::push_str(self, s)
    }
    fn push_owned(&mut self, s: String) {
        String::push_str(self, &s)
    }
}

/// Appends the text of a chat or completion body to `out`. Message content may be a
/// string or a list of parts (OpenAI's multimodal form); text parts are used.
pub fn request_text<'a>(body: &'a Value, out: &mut impl TextSink<'a>) {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for m in messages {
            out.push_str(m.get("role").and_then(Value::as_str).unwrap_or(""));
            out.push_str(": ");
            match m.get("content") {
                Some(Value::String(t)) => out.push_str(t),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            out.push_str(t);
                        }
                    }
                }
                _ => {}
            }
            out.push_str("\n");
        }
    } else if let Some(prompt) = body.get("prompt") {
        match prompt {
            Value::String(p) => out.push_str(p),
            Value::Array(items) => {
                for i in items {
                    match i {
                        Value::String(s) => out.push_str(s),
                        other => out.push_owned(other.to_string()),
                    }
                }
            }
            other => out.push_owned(other.to_string()),
        }
    } else if let Some(input) = body.get("input") {
        match input {
            Value::String(s) => out.push_str(s),
            other => out.push_owned(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_conversation_with_roles() {
        let v: Value = serde_json::from_str(
            r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
        )
        .unwrap();
        let mut s = String::new();
        request_text(&v, &mut s);
        assert_eq!(s, "system: be brief\nuser: hi\n");
        let mut s = String::new();
        request_text(&serde_json::json!({"prompt": "once upon"}), &mut s);
        assert_eq!(s, "once upon");
    }
}
