//! [`Endpoint`]: the broker's URL, kept secret, beside a form of it fit to print.
//!
//! The URL is `amqp://user:password@host:port/vhost` (the vhost percent-encoded: `%2f`
//! for `/`), or `amqps://...` for TLS with the `tls` feature. Every error and every
//! `Debug` output shows [`Endpoint::shown`], which never carries the password; text that
//! comes back from the client library passes through [`Endpoint::redact`] too.

use std::fmt;

use cairn_bus::TransportError;
use lapin::uri::{AMQPScheme, AMQPUri};

/// A parsed broker URL.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The URL as given, password included: only ever handed to the client library.
    url: String,
    /// `scheme://user@host:port (vhost v)`.
    shown: String,
    password: String,
}

impl Endpoint {
    /// Parses `url`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Invalid`] (`what: "url"`) when it is not an AMQP URL, or asks for
    /// TLS in a build without the `tls` feature.
    pub(crate) fn parse(url: &str) -> Result<Self, TransportError> {
        let uri: AMQPUri = url.parse().map_err(|reason: String| {
            let reason = redact_url(&reason, url);
            TransportError::Invalid {
                what: "url",
                reason: format!("not an AMQP URL: {reason}"),
            }
        })?;
        let tls = matches!(uri.scheme, AMQPScheme::AMQPS);
        if tls && !cfg!(feature = "tls") {
            return Err(TransportError::Invalid {
                what: "url",
                reason: "amqps:// needs cairn-amqp's `tls` feature".to_owned(),
            });
        }
        let authority = &uri.authority;
        let shown = format!(
            "{}://{}@{}:{} (vhost {:?})",
            if tls { "amqps" } else { "amqp" },
            authority.userinfo.username,
            authority.host,
            authority.port,
            uri.vhost
        );
        Ok(Self {
            url: url.to_owned(),
            shown,
            password: authority.userinfo.password.clone(),
        })
    }

    /// The URL with its password, for the client library only.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The endpoint without its password.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// `text` with every occurrence of the password (and of the URL) masked.
    pub(crate) fn redact(&self, text: &str) -> String {
        let text = redact_url(text, &self.url);
        if self.password.is_empty() {
            text
        } else {
            text.replace(&self.password, "***")
        }
    }
}

/// `text` with the URL, and the password part of it, masked.
fn redact_url(text: &str, url: &str) -> String {
    let masked = text.replace(url, "<url>");
    match password_of(url) {
        Some(password) if !password.is_empty() => masked.replace(password, "***"),
        _ => masked,
    }
}

/// The password part of a URL, found without parsing it (for URLs that do not parse).
fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    Some(userinfo.split_once(':')?.1)
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_endpoint_keeps_user_host_port_and_vhost_but_not_the_password() {
        let endpoint = Endpoint::parse("amqp://guest:s3cret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            endpoint.shown(),
            "amqp://guest@127.0.0.1:5672 (vhost \"/\")"
        );
        assert!(!format!("{endpoint:?}").contains("s3cret"));
        assert_eq!(endpoint.redact("login s3cret refused"), "login *** refused");
    }

    #[test]
    fn a_url_that_does_not_parse_is_invalid_without_its_password() {
        match Endpoint::parse("amqp://guest:s3cret@[::1") {
            Err(TransportError::Invalid {
                what: "url",
                reason,
            }) => {
                assert!(!reason.contains("s3cret"), "{reason}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert!(Endpoint::parse("http://localhost").is_err());
    }

    #[test]
    fn the_password_is_found_in_a_url_that_does_not_parse() {
        assert_eq!(password_of("amqp://u:p@h:1/%2f"), Some("p"));
        assert_eq!(password_of("amqp://h:1/%2f"), None);
    }
}
