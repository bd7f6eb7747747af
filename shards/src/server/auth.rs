//! Who may use the router: `--admin-api-key` guards the admin writes (adding and
//! removing workers, cache flushes), `--client-api-key` the inference API. Both are
//! bearer tokens (RFC 6750 §2.1: `Authorization: Bearer <token>`), checked on the
//! shard before anything else is read, so a refused client costs one small answer.
//! Health endpoints stay open: load balancers and kubelets probe them without keys.

use crate::client::Client;
use crate::codec::request::RequestHead;
use crate::config::AccessKeys;

/// Why a request was refused, for the 401 message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An admin write without the admin key.
    Admin,
    /// An inference call without a client key.
    Client,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::Admin => {
                "this admin call needs the router's admin key (Authorization: Bearer <key>)"
            }
            Refusal::Client => {
                "missing or invalid API key: send Authorization: Bearer <key> with one of the \
                 router's client keys"
            }
        }
    }
}

/// Admin calls that change the router; reads (`GET /list_workers`, `GET /workers`,
/// `GET /router_info`) stay open, as in the published router.
fn is_admin_write(head: &RequestHead, admin_path: bool) -> bool {
    let read = matches!(head.method(), b"GET" | b"HEAD");
    !read && (admin_path || head.path() == b"/flush_cache")
}

/// The refusal for this request, if any. `admin_path`: the shard routes it to the
/// admin API.
pub fn refusal(keys: &AccessKeys, head: &RequestHead, admin_path: bool) -> Option<Refusal> {
    let token = bearer(head);
    if is_admin_write(head, admin_path) {
        let key = keys.admin.as_deref()?;
        return (!token.is_some_and(|t| same_secret(t, key))).then_some(Refusal::Admin);
    }
    if admin_path || keys.clients.is_empty() {
        return None;
    }
    // Every key is compared, so the time taken does not tell which one nearly matched.
    let granted = token.is_some_and(|t| {
        keys.clients
            .iter()
            .fold(false, |ok, key| ok | same_secret(t, key))
    });
    (!granted).then_some(Refusal::Client)
}

/// Answers 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3). The body, if any, was
/// not read, so the connection closes after it.
pub async fn refuse(c: &mut Client, why: Refusal) -> bool {
    let keep = !c.head.has_body();
    c.send_error_with(
        401,
        why.message(),
        keep,
        &[(b"www-authenticate", b"Bearer")],
    )
    .await
}

/// The token of an `Authorization: Bearer` header (scheme case-insensitive).
fn bearer(head: &RequestHead) -> Option<&[u8]> {
    let value = head.header(b"authorization")?;
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Compares without stopping at the first difference, so the answer's timing does not
/// reveal how much of a guess was right (only whether its length was).
fn same_secret(given: &[u8], key: &[u8]) -> bool {
    let mut diff = given.len() ^ key.len();
    for (i, k) in key.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ k);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Status;

    fn head(raw: &[u8]) -> RequestHead {
        let mut h = RequestHead::default();
        assert!(matches!(h.parse(raw), Ok(Status::Complete(_))));
        h
    }

    fn keys(admin: Option<&str>, clients: &[&str]) -> AccessKeys {
        AccessKeys {
            admin: admin.map(|k| k.as_bytes().to_vec()),
            clients: clients.iter().map(|k| k.as_bytes().to_vec()).collect(),
        }
    }

    #[test]
    fn admin_writes_need_the_admin_key_and_reads_do_not() {
        let k = keys(Some("s3cret"), &[]);
        let add = head(b"POST /add_worker?url=http://x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(refusal(&k, &add, true), Some(Refusal::Admin));
        let wrong = head(b"POST /add_worker HTTP/1.1\r\nAuthorization: Bearer s3cre\r\n\r\n");
        assert_eq!(refusal(&k, &wrong, true), Some(Refusal::Admin));
        let right = head(b"DELETE /workers/x HTTP/1.1\r\nauthorization: bearer  s3cret \r\n\r\n");
        assert_eq!(refusal(&k, &right, true), None);
        let list = head(b"GET /list_workers HTTP/1.1\r\n\r\n");
        assert_eq!(refusal(&k, &list, true), None);
        let flush = head(b"POST /flush_cache HTTP/1.1\r\n\r\n");
        assert_eq!(refusal(&k, &flush, false), Some(Refusal::Admin));
    }

    #[test]
    fn without_keys_everything_is_open() {
        let k = keys(None, &[]);
        let add = head(b"POST /add_worker?url=http://x HTTP/1.1\r\n\r\n");
        assert_eq!(refusal(&k, &add, true), None);
        let chat = head(b"POST /v1/chat/completions HTTP/1.1\r\n\r\n");
        assert_eq!(refusal(&k, &chat, false), None);
    }

    #[test]
    fn inference_needs_one_of_the_client_keys() {
        let k = keys(Some("admin"), &["one", "two"]);
        let none = head(b"POST /v1/chat/completions HTTP/1.1\r\n\r\n");
        assert_eq!(refusal(&k, &none, false), Some(Refusal::Client));
        let basic = head(b"GET /v1/models HTTP/1.1\r\nAuthorization: Basic dHdv\r\n\r\n");
        assert_eq!(refusal(&k, &basic, false), Some(Refusal::Client));
        let admin = head(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer admin\r\n\r\n");
        assert_eq!(refusal(&k, &admin, false), Some(Refusal::Client));
        let two = head(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer two\r\n\r\n");
        assert_eq!(refusal(&k, &two, false), None);
        let bearerless = head(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearertwo\r\n\r\n");
        assert_eq!(refusal(&k, &bearerless, false), Some(Refusal::Client));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
