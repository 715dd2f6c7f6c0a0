//! The one redaction of URLs and of text that may quote them.
//!
//! Camera URLs carry `user:password@` or a bare token (`rtsp://token@host`,
//! as some cloud cameras hand out); broker URLs must not, but an operator may
//! still write one. Everything that shows a URL to a person — logs,
//! `/api/cameras`, camera status payloads, configuration errors,
//! `validate --print` — goes through [`redact_url`] or [`redact_text`].
//! URLs are parsed by the `url` crate (WHATWG rules, the same ones that
//! decide what is the authority); text that is not a URL falls back to
//! hiding everything before the last `@` of its authority.

/// Shown in place of a secret.
pub const REDACTED: &str = "***";

/// `scheme://user:password@host/…` → `scheme://user:***@host/…`;
/// `scheme://token@host/…` → `scheme://***@host/…` (a lone user name may be
/// the credential itself). A URL without userinfo comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(authority) = authority_of(url) else {
        return url.to_string();
    };
    if !authority.contains('@') {
        return url.to_string();
    }
    if let Ok(mut parsed) = url::Url::parse(url) {
        if parsed.has_host() {
            let result = if parsed.password().is_some() {
                parsed.set_password(Some(REDACTED))
            } else {
                parsed
                    .set_password(None)
                    .and_then(|()| parsed.set_username(REDACTED))
            };
            if result.is_ok() {
                // The url crate percent-encodes the stars of the password.
                return parsed.as_str().replace("%2A%2A%2A", REDACTED);
            }
        }
    }
    // Not a URL the parser accepts: hide everything up to the last `@`.
    let start = url.find("://").map_or(0, |i| i + 3);
    match authority.rfind('@') {
        Some(at) => format!("{}{REDACTED}@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

/// The authority (`userinfo@host:port`) of `scheme://authority/…`.
fn authority_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Redacts every URL inside free text (GStreamer and library error messages
/// quote URLs and properties), and each of `secrets` wherever it appears.
pub fn redact_text(text: &str, secrets: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        // The scheme: the letters right before `://`.
        let scheme_start = rest[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        out.push_str(&rest[..scheme_start]);
        let tail = &rest[scheme_start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .unwrap_or(tail.len());
        let end = end.max(pos - scheme_start + 3);
        out.push_str(&redact_url(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_hidden_users_kept() {
        assert_eq!(
            redact_url("rtsp://admin:pa:ss@10.0.0.2:554/s?x=1"),
            "rtsp://admin:***@10.0.0.2:554/s?x=1"
        );
        assert_eq!(
            redact_url("rtsp://token123@cam/x"),
            "rtsp://***@cam/x",
            "a lone user name may be the credential"
        );
        assert_eq!(redact_url("rtsp://cam/x"), "rtsp://cam/x");
        assert_eq!(redact_url("test://?pattern=ball"), "test://?pattern=ball");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("rtsp://cam/path@with-at"),
            "rtsp://cam/path@with-at"
        );
        assert_eq!(
            redact_url("mqtt://edge:s3cret@broker:1883"),
            "mqtt://edge:***@broker:1883"
        );
        // Userinfo with characters the parser refuses still goes.
        let odd = redact_url("rtsp://us er:se cret@cam/x");
        assert!(!odd.contains("se cret") && odd.ends_with("@cam/x"), "{odd}");
    }

    #[test]
    fn urls_inside_text_and_named_secrets_are_hidden() {
        let text = "could not open rtsp://u:secret@cam:554/a (rtsp://cam/b)";
        assert_eq!(
            redact_text(text, &[]),
            "could not open rtsp://u:***@cam:554/a (rtsp://cam/b)"
        );
        assert_eq!(
            redact_text("Location: 'rtsp://tok@cam/x'", &[]),
            "Location: 'rtsp://***@cam/x'"
        );
        // Several URLs, one with credentials and no path (as camera status
        // errors quote them before they go on the bus).
        assert_eq!(
            redact_text("a http://h/x and rtsp://u:p@h and rtsp://h2", &[]),
            "a http://h/x and rtsp://u:***@h and rtsp://h2"
        );
        assert_eq!(redact_text("pw=hunter2!", &["hunter2"]), "pw=***!");
        assert_eq!(redact_text("nothing here", &[""]), "nothing here");
    }
}
