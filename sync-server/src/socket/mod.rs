//! The socket transports: one [`session::Session`] per socket, carried by the native protocol
//! ([`native`], `GET /v1/ws`) or by Socket.IO v4 ([`socketio`], `/socket.io`).

pub mod native;
pub mod session;
pub mod socketio;
pub mod upgrade;

/// Whether a browser `Origin` may open a socket. Patterns are exact origins, `*` (anything), or
/// end in `:*` for any port (`http://localhost:*`). A request without `Origin` (a native app, a
/// server) is not a browser and is allowed; its token still has to verify.
pub fn origin_allowed(patterns: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    // A page this server served itself: its origin names the host the request was sent to.
    let authority = origin.split_once("://").map(|(_, a)| a);
    if authority.is_some_and(|a| Some(a) == host) {
        return true;
    }
    patterns.iter().any(|p| {
        p == "*"
            || p == origin
            || p.strip_suffix(":*").is_some_and(|base| {
                origin == base
                    || origin
                        .strip_prefix(base)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(|port| {
                            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                        })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn a_page_of_the_server_itself_is_allowed_whatever_the_list() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(&none, Some("https://sync.example"), Some("sync.example")));
        assert!(origin_allowed(&none, Some("http://10.0.0.5:3000"), Some("10.0.0.5:3000")));
        assert!(!origin_allowed(&none, Some("http://10.0.0.5:3001"), Some("10.0.0.5:3000")));
        assert!(!origin_allowed(&none, Some("https://evil.example"), Some("sync.example")));
        assert!(!origin_allowed(&none, Some("null"), Some("null")));
    }

    #[test]
    fn origins_match_exactly_or_by_port_wildcard() {
        let p = vec!["http://localhost:*".to_string(), "https://app.example".to_string()];
        assert!(origin_allowed(&p, None, None));
        assert!(origin_allowed(&p, Some("http://localhost:5173"), None));
        assert!(origin_allowed(&p, Some("http://localhost"), None));
        assert!(origin_allowed(&p, Some("https://app.example"), None));
        assert!(!origin_allowed(&p, Some("https://app.example.evil"), None));
        assert!(!origin_allowed(&p, Some("http://localhost.evil:80"), None));
        assert!(!origin_allowed(&p, Some("http://localhost:80x"), None));
        assert!(!origin_allowed(&p, Some("https://evil.example"), None));
        assert!(origin_allowed(&["*".to_string()], Some("https://anything"), None));
    }
}
