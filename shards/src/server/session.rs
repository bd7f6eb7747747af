//! `POST /finish_session?session_id=ID`: a client says a session is over, so
//! sticky_least_loaded lets its worker go, on this shard and (by report) the others.
//! As in 0.1.17 the answer is 200 `{"status":"ok","session_id":ID}` whatever the
//! policy, also for unknown ids.

use crate::client::Client;
use crate::errors::write_answer;
use crate::messages::Report;
use crate::shard::Shard;

/// Answers the call (the body, if any, is not read: the connection then closes).
pub async fn finish(shard: &Shard, c: &mut Client) -> bool {
    let keep = !c.head.has_body() && c.head.keep_alive;
    if c.head.method() != b"POST" {
        return c
            .send_error(405, "use POST /finish_session?session_id=ID", keep)
            .await;
    }
    let id = c.head.query().and_then(|q| param(q, b"session_id"));
    let Some(id) = id else {
        // 0.1.17's wording, which clients may match on.
        let msg = "Failed to deserialize query string: missing field `session_id`";
        return c.send_error(400, msg, keep).await;
    };
    if shard.finish_session(&id) {
        crate::debug!("SLL: finished session '{id}'");
    }
    let _ = shard.reports.send(Report::SessionFinished {
        shard: shard.index,
        session: std::sync::Arc::from(id.as_str()),
    });
    let body = serde_json::json!({"status": "ok", "session_id": id}).to_string();
    c.outcome.status = 200;
    c.out.clear();
    let minor = c.head.minor_version;
    write_answer(
        &mut c.out,
        minor,
        200,
        "application/json",
        body.as_bytes(),
        !keep,
    );
    c.flush_out().await.is_ok() && keep
}

/// A query parameter, percent-decoded (`+` is a space, as in forms).
fn param(query: &[u8], name: &[u8]) -> Option<String> {
    let value = query.split(|&b| b == b'&').find_map(|kv| {
        let at = kv.iter().position(|&b| b == b'=')?;
        (&kv[..at] == name).then(|| &kv[at + 1..])
    })?;
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let escaped = match value.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, value[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::param;

    #[test]
    fn parameters_are_found_and_decoded() {
        assert_eq!(
            param(b"session_id=a%20b+c", b"session_id").as_deref(),
            Some("a b c")
        );
        assert_eq!(
            param(b"x=1&session_id=s1", b"session_id").as_deref(),
            Some("s1")
        );
        assert_eq!(param(b"session_id=", b"session_id").as_deref(), Some(""));
        assert_eq!(param(b"session=1", b"session_id"), None);
        assert_eq!(
            param(b"session_id=100%", b"session_id").as_deref(),
            Some("100%")
        );
        assert_eq!(
            param(b"session_id=%4", b"session_id").as_deref(),
            Some("%4")
        );
    }
}
