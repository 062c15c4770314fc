//! [`Endpoint`]: the server URL a transport connects to, split into the address the
//! client dials and the credentials it presents, with a form fit to print that never
//! shows a password or a token.
//!
//! Accepted: `[nats|tls]://[user:password@|token@]host[:port]`, or a bare `host[:port]`
//! (`nats://` assumed; the port defaults to 4222 in the client). The user name and
//! password may be percent-encoded. `tls://` needs this crate's `tls` feature.

use std::fmt;

use cairn_bus::TransportError;

/// What the client presents to the server.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

/// A parsed server URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host:port`, without credentials: what the client dials.
    address: String,
    /// The URL as it may be printed.
    shown: String,
    credentials: Credentials,
}

impl Endpoint {
    /// Parses `url`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] (`what`: `url`) for an unknown scheme, a path, or an
    /// empty host; the reason never repeats the credentials.
    pub fn parse(url: &str) -> Result<Self, TransportError> {
        let invalid = |reason: String| TransportError::Invalid {
            what: "url",
            reason,
        };
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("nats".to_owned(), url),
        };
        let (userinfo, host) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, rest),
        };
        let host = host.strip_suffix('/').unwrap_or(host);
        let shown_userinfo = match userinfo {
            None => String::new(),
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None => "***@".to_owned(),
            },
        };
        let shown = format!("{scheme}://{shown_userinfo}{host}");
        match scheme.as_str() {
            "nats" => {}
            "tls" if cfg!(feature = "tls") => {}
            "tls" => {
                return Err(invalid(format!(
                    "{shown}: tls:// needs cairn-nats built with its `tls` feature"
                )));
            }
            other => {
                return Err(invalid(format!(
                    "{shown}: the scheme {other:?} is not one of nats://, tls://"
                )));
            }
        }
        if host.is_empty() || host.contains(['/', '?', '#', ',', ' ']) {
            return Err(invalid(format!(
                "{shown}: expected one host[:port] and nothing after it"
            )));
        }
        let credentials = match userinfo {
            None => Credentials::None,
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, password)) => Credentials::UserPassword {
                    user: crate::codec::unpercent(user),
                    password: crate::codec::unpercent(password),
                },
                None => Credentials::Token(crate::codec::unpercent(userinfo)),
            },
        };
        Ok(Self {
            address: format!("{scheme}://{host}"),
            shown,
            credentials,
        })
    }

    /// What the client dials: scheme, host and port, no credentials.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }
}

/// The URL with its password or token replaced by `***`.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Endpoint").field(&self.shown).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_used_but_never_shown() {
        let endpoint = Endpoint::parse("nats://alice:s%40cret@127.0.0.1:4222").unwrap();
        assert_eq!(endpoint.address(), "nats://127.0.0.1:4222");
        assert_eq!(endpoint.to_string(), "nats://alice:***@127.0.0.1:4222");
        assert!(!format!("{endpoint:?}").contains("cret"));
        assert!(
            endpoint.credentials()
                == &Credentials::UserPassword {
                    user: "alice".to_owned(),
                    password: "s@cret".to_owned()
                }
        );
    }

    #[test]
    fn a_token_is_hidden_whole() {
        let endpoint = Endpoint::parse("nats://t0ken@localhost").unwrap();
        assert_eq!(endpoint.to_string(), "nats://***@localhost");
        assert!(endpoint.credentials() == &Credentials::Token("t0ken".to_owned()));
    }

    #[test]
    fn a_bare_address_means_nats() {
        let endpoint = Endpoint::parse("127.0.0.1:4222").unwrap();
        assert_eq!(endpoint.address(), "nats://127.0.0.1:4222");
        assert!(endpoint.credentials() == &Credentials::None);
    }

    #[test]
    fn other_schemes_and_paths_are_invalid_without_echoing_the_password() {
        for url in [
            "http://u:hunter2@host:1",
            "nats://u:hunter2@host:1/path",
            "nats://u:hunter2@",
        ] {
            let error = Endpoint::parse(url).unwrap_err();
            assert!(matches!(error, TransportError::Invalid { what: "url", .. }));
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }
}
