//! Stream names: validated once, cheap to clone, with their category.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The longest stream name accepted, in bytes of UTF-8.
pub const MAX_STREAM_NAME_LEN: usize = 256;

/// The name of a stream, validated.
///
/// A name is 1 to [`MAX_STREAM_NAME_LEN`] bytes of UTF-8 without control characters.
/// Names that start with `$` are reserved for the store itself (`$all` is the global log)
/// and are refused. Cloning is cheap: the text is shared.
///
/// # Examples
///
/// ```
/// use cairn_core::StreamName;
///
/// let name = StreamName::new("order-42").unwrap();
/// assert_eq!(name.category(), "order");
/// assert!(StreamName::new("$all").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

/// Why a stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidStreamName {
    /// The name is the empty string.
    #[error("stream name is empty")]
    Empty,
    /// The name is longer than [`MAX_STREAM_NAME_LEN`] bytes.
    #[error("stream name is {len} bytes long; the limit is {MAX_STREAM_NAME_LEN}")]
    TooLong {
        /// The length of the refused name, in bytes.
        len: usize,
    },
    /// The name contains a control character.
    #[error("stream name contains the control character {character:?} at byte {index}")]
    ControlCharacter {
        /// The offending character.
        character: char,
        /// Its byte offset in the name.
        index: usize,
    },
    /// The name starts with `$`, which is reserved for the store.
    #[error("stream name {name:?} starts with '$', which is reserved for the store")]
    Reserved {
        /// The refused name.
        name: String,
    },
}

impl InvalidStreamName {
    /// A stable, machine-readable code for this error, never reused for another meaning.
    pub fn code(&self) -> &'static str {
        "invalid_stream_name"
    }
}

impl StreamName {
    /// Validates `name` and makes a stream name of it.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidStreamName`] when the name is empty, longer than
    /// [`MAX_STREAM_NAME_LEN`] bytes, contains a control character or starts with `$`.
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidStreamName> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(InvalidStreamName::Empty);
        }
        if name.len() > MAX_STREAM_NAME_LEN {
            return Err(InvalidStreamName::TooLong { len: name.len() });
        }
        if let Some((index, character)) = name.char_indices().find(|(_, c)| c.is_control()) {
            return Err(InvalidStreamName::ControlCharacter { character, index });
        }
        if name.starts_with('$') {
            return Err(InvalidStreamName::Reserved {
                name: name.to_owned(),
            });
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An equal name in an allocation of its own. Clones share one reference count; a
    /// thread that clones a name many times (once per event of a batch, say) while other
    /// threads clone the original makes every clone a contended atomic operation, and a
    /// copy of its own avoids that.
    #[must_use]
    pub fn unshared(&self) -> Self {
        Self(Arc::from(&*self.0))
    }

    /// The category: the part before the first `-` (`order-42` is in category `order`).
    /// A name without `-` is its own category.
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }
}

/// The category of a stream name given as text: the part before the first `-`, or the
/// whole name when it has none.
pub fn category_of(name: &str) -> &str {
    name.split_once('-').map_or(name, |(category, _)| category)
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for StreamName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for StreamName {
    type Err = InvalidStreamName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = InvalidStreamName;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for StreamName {
    type Error = InvalidStreamName;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl Serialize for StreamName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_reports_their_category() {
        let name = StreamName::new("order-42-lines").unwrap();
        assert_eq!(name.as_str(), "order-42-lines");
        assert_eq!(name.category(), "order");
        assert_eq!(
            StreamName::new("inventory").unwrap().category(),
            "inventory"
        );
        assert_eq!(StreamName::new("-x").unwrap().category(), "");
        assert_eq!(StreamName::new("π-ü").unwrap().category(), "π");
    }

    #[test]
    fn refuses_empty_long_control_and_reserved_names() {
        assert_eq!(StreamName::new(""), Err(InvalidStreamName::Empty));
        let long = "a".repeat(MAX_STREAM_NAME_LEN + 1);
        assert_eq!(
            StreamName::new(&long),
            Err(InvalidStreamName::TooLong { len: 257 })
        );
        assert!(StreamName::new("a".repeat(MAX_STREAM_NAME_LEN)).is_ok());
        // 128 two-byte characters are 256 bytes; one more is too long.
        assert!(StreamName::new("é".repeat(128)).is_ok());
        assert!(StreamName::new("é".repeat(129)).is_err());
        assert_eq!(
            StreamName::new("a\nb"),
            Err(InvalidStreamName::ControlCharacter {
                character: '\n',
                index: 1
            })
        );
        assert!(StreamName::new("a\u{0}").is_err());
        assert!(StreamName::new("a\u{85}").is_err());
        assert!(matches!(
            StreamName::new("$all"),
            Err(InvalidStreamName::Reserved { .. })
        ));
        assert!(StreamName::new("a$").is_ok());
    }

    #[test]
    fn deserializing_validates() {
        let ok: StreamName = serde_json::from_str("\"a-1\"").unwrap();
        assert_eq!(ok.as_str(), "a-1");
        assert!(serde_json::from_str::<StreamName>("\"$x\"").is_err());
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"a-1\"");
    }
}
