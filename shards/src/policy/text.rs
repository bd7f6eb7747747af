//! The request text a policy keys on: the whole conversation (every message with its
//! role) or the prompt, read from the parsed JSON body.

use serde_json::Value;

/// The top-level body fields the policies read, found in one pass over the object.
/// A lookup per field walks the map's keys again each time; with seven names that
/// was a third of a consistent_hash decision.
#[derive(Default)]
pub struct BodyFields<'a> {
    pub messages: Option<&'a Value>,
    pub prompt: Option<&'a Value>,
    pub input: Option<&'a Value>,
    pub session_params: Option<&'a Value>,
    pub user: Option<&'a Value>,
    pub session_id: Option<&'a Value>,
    pub user_id: Option<&'a Value>,
    pub cache_salt: Option<&'a Value>,
}

impl<'a> BodyFields<'a> {
    pub fn of(body: &'a Value) -> Self {
        let mut f = BodyFields::default();
        let Some(object) = body.as_object() else {
            return f;
        };
        for (name, value) in object {
            let slot = match name.as_str() {
                "messages" => &mut f.messages,
                "prompt" => &mut f.prompt,
                "input" => &mut f.input,
                "session_params" => &mut f.session_params,
                "user" => &mut f.user,
                "session_id" => &mut f.session_id,
                "user_id" => &mut f.user_id,
                "cache_salt" => &mut f.cache_salt,
                _ => continue,
            };
            *slot = Some(value);
        }
        f
    }
}

/// Where the text goes, piece by piece: a `String` (cache_aware keeps it) or the
/// consistent-hash key (it keeps only the edges of the text, mostly borrowed).
pub trait TextSink<'a> {
    fn push_str(&mut self, s: &'a str);
    /// A piece rendered for the moment (a token id of a prompt): the sink copies
    /// what it keeps.
    fn push_rendered(&mut self, s: &str);
}

impl<'a> TextSink<'a> for String {
    fn push_str(&mut self, s: &'a str) {
        String::push_str(self, s)
    }
    fn push_rendered(&mut self, s: &str) {
        String::push_str(self, s)
    }
}

/// A prompt or input value: a string, token ids, or lists of either (a batch).
/// Each token id is followed by a space, so `[1, 23]` and `[12, 3]` differ and a
/// token prefix is a text prefix.
fn push_value<'a>(value: &'a Value, out: &mut impl TextSink<'a>) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Array(items) => items.iter().for_each(|i| push_value(i, out)),
        Value::Number(n) => {
            use std::io::Write;
            // Rendered on the stack: a prompt of 4,000 token ids makes no allocation.
            let mut buf = [0u8; 40];
            let mut rest = &mut buf[..];
            let _ = write!(rest, "{n} ");
            let used = 40 - rest.len();
            out.push_rendered(std::str::from_utf8(&buf[..used]).unwrap_or_default());
        }
        other => out.push_rendered(&other.to_string()),
    }
}

/// Appends the text of a chat or completion body to `out`. Message content may be a
/// string or a list of parts (OpenAI's multimodal form); text parts are used.
pub fn request_text<'a>(body: &BodyFields<'a>, out: &mut impl TextSink<'a>) {
    if let Some(messages) = body.messages.and_then(Value::as_array) {
        messages.iter().for_each(|m| push_message(m, out));
    } else if let Some(prompt) = body.prompt.or(body.input) {
        push_value(prompt, out);
    }
}

/// [`request_text`] into a string, returning where the conversation's previous turn
/// ends: the offset of the second-to-last message (the answer to the previous turn,
/// which no router saw, then the new question), 0 for a prompt or a first turn. A
/// router that sent the previous turn holds the text up to there.
///
/// A `cache_salt` comes first: vLLM caches the same text under another salt (or none)
/// as other blocks, so to a prefix tree it is another text.
pub fn conversation_text(body: &BodyFields<'_>, out: &mut String) -> usize {
    if let Some(salt) = body.cache_salt.and_then(Value::as_str) {
        if !salt.is_empty() {
            out.push_str("\u{1}cache_salt: ");
            out.push_str(salt);
            out.push('\n');
        }
    }
    let Some(messages) = body.messages.and_then(Value::as_array) else {
        request_text(body, out);
        return 0;
    };
    let mut previous_end = 0;
    for (i, m) in messages.iter().enumerate() {
        // (The first message's offset is 0 without a salt: a first turn.)
        if i + 2 == messages.len() && i > 0 {
            previous_end = out.len();
        }
        push_message(m, out);
    }
    previous_end
}

fn push_message<'a>(m: &'a Value, out: &mut impl TextSink<'a>) {
    let (mut role, mut content) = (None, None);
    for (name, value) in m.as_object().into_iter().flatten() {
        match name.as_str() {
            "role" => role = value.as_str(),
            "content" => content = Some(value),
            _ => {}
        }
    }
    out.push_str(role.unwrap_or(""));
    out.push_str(": ");
    match content {
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
        request_text(&BodyFields::of(&v), &mut s);
        assert_eq!(s, "system: be brief\nuser: hi\n");
        let mut s = String::new();
        request_text(
            &BodyFields::of(&serde_json::json!({"prompt": "once upon"})),
            &mut s,
        );
        assert_eq!(s, "once upon");
        let mut s = String::new();
        request_text(
            &BodyFields::of(&serde_json::json!({"prompt": [[1, 23], [12, 3]]})),
            &mut s,
        );
        assert_eq!(s, "1 23 12 3 ");
    }

    #[test]
    fn a_cache_salt_leads_the_conversation() {
        let chat = |salt: Option<&str>| {
            let mut v = serde_json::json!({"messages": [
                {"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]});
            if let Some(salt) = salt {
                v["cache_salt"] = salt.into();
            }
            let mut s = String::new();
            let end = conversation_text(&BodyFields::of(&v), &mut s);
            (s, end)
        };
        let (plain, end) = chat(None);
        assert_eq!(&plain[end..], "assistant: a\nuser: q2\n");
        let (salted, end) = chat(Some("t1"));
        assert_eq!(salted, format!("\u{1}cache_salt: t1\n{plain}"));
        assert_eq!(&salted[end..], "assistant: a\nuser: q2\n");
        assert_ne!(salted, chat(Some("t2")).0);
    }
}
